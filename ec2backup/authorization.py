"""Authorization of what a workflow is asked to touch: the installation configuration is the
allow-list of Regions, accounts (their roles) and repositories.

Any client of the Temporal namespace can start a workflow with any input (`temporal workflow
start`, the Web UI), so the CLI's checks are not enough: every workflow that takes Regions,
role ARNs or repositories runs `authorize` in an activity on the orchestrator (loading the
configuration is I/O, not workflow code) before it has any side effect, and fails at once with
one line naming the first value that is not allowed (`NotAuthorized`, non-retryable).

What is allowed, once the configuration names any entry (`home_region`, `regions`,
`[[accounts]]` or `[[repositories]]`, in the file or as `EC2BACKUP_*` variables):
- Regions: `regions` and the home Region;
- accounts: the backup account (the orchestrator's own credentials, no role) and the role ARN
  of every `[[accounts]]` entry, exactly (another role in a listed account may hold other
  rights);
- repositories: every `[[repositories]]` url (a trailing `/` does not matter); a url ending in
  `*` allows every repository whose url starts with what precedes the `*`
  (`s3://backups/*`, `/srv/repos/*`).
An empty list then allows nothing of its kind (deny by default: an operator who lists two
accounts does not expect a third to be reachable).

A configuration that names none of them (no file at all, or a file with only `[temporal]` or
`[worker]` settings) keeps the behaviour from before the allow-list: every value is allowed and
the result says so (`enforced: false`; the orchestrator logs it). Installations configured by
the environment alone would otherwise stop working on upgrade; `ec2backup doctor` and
docs/deploy.md tell operators to name their Regions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ec2backup import aws
from ec2backup.config import InstallationConfig
from ec2backup.errors import UserError
from ec2backup.models.authorization import AuthorizeInput
from ec2backup.policy import Policy

# A repository entry ending in this matches every url starting with the rest of the entry.
PATTERN_SUFFIX = "*"


class NotAuthorized(UserError):
    """A workflow was asked to touch a Region, account, role or repository the installation
    configuration does not allow."""


def is_pattern(url: str) -> bool:
    return url.endswith(PATTERN_SUFFIX)


def enforced(cfg: InstallationConfig) -> bool:
    """Whether the configuration is an allow-list (it names any Region, account or
    repository); see the module doc for why an empty configuration allows everything."""
    return bool(cfg.home_region or cfg.regions or cfg.accounts or cfg.repositories)


def allowed_regions(cfg: InstallationConfig, home_region: str) -> set[str]:
    return {home_region, *cfg.regions}


def repository_allowed(cfg: InstallationConfig, url: str) -> bool:
    wanted = url.rstrip("/")
    for entry in cfg.repositories:
        if is_pattern(entry.url):
            if wanted.startswith(entry.url[: -len(PATTERN_SUFFIX)]):
                return True
        elif entry.url.rstrip("/") == wanted:
            return True
    return False


@dataclass
class Decision:
    enforced: bool
    regions: list[str]  # the Regions asked for, sorted (what search attributes show)
    account_ids: list[str]  # the accounts asked for, the backup account included, sorted


def authorize(
    cfg: InstallationConfig,
    *,
    what: str,
    home_region: str,
    backup_account_id: str,
    regions: list[str],
    role_arns: list[str],
    account_ids: list[str],
    repositories: list[str],
) -> Decision:
    """Check every value against the configuration; NotAuthorized names the first refused
    one (`what` says which workflow asked)."""
    on = enforced(cfg)
    accounts = {backup_account_id}
    for role in role_arns:
        try:
            account = aws.account_of_role(role)
        except ValueError:
            raise NotAuthorized(f"{what}: {role!r} is not an IAM role ARN") from None
        if on and not any(a.role_arn == role for a in cfg.accounts):
            raise NotAuthorized(
                f"{what}: role {role} is not in the installation configuration "
                "([[accounts]] role_arn)"
            )
        accounts.add(account)
    configured_accounts = {backup_account_id, *(a.id for a in cfg.accounts)}
    for account in account_ids:
        if on and account not in configured_accounts:
            raise NotAuthorized(
                f"{what}: account {account} is not in the installation configuration "
                "([[accounts]] id)"
            )
        accounts.add(account)
    allowed = allowed_regions(cfg, home_region)
    for region in regions:
        if on and region not in allowed:
            raise NotAuthorized(
                f"{what}: Region {region} is not in the installation configuration "
                "(regions, home_region)"
            )
    for url in repositories:
        if on and not repository_allowed(cfg, url):
            raise NotAuthorized(
                f"{what}: repository {url} is not in the installation configuration "
                "([[repositories]] url; a url ending in * allows a prefix)"
            )
    return Decision(enforced=on, regions=sorted(set(regions)), account_ids=sorted(accounts))


def policy_request(what: str, policy: Policy) -> AuthorizeInput:
    """Everything a policy makes a run touch: the Regions and accounts it selects from, its
    replication targets, its repositories and its notification topic."""
    targets = policy.replication.targets if policy.replication else []
    regions = [*policy.selection.regions, *(t.region for t in targets)]
    account_ids = []
    if policy.notify is not None:
        regions.append(policy.notify.topic_region)
        account_ids.append(policy.notify.topic_account)
    roles = [r for r in [*policy.selection.accounts, *(t.account_role_arn for t in targets)] if r]
    repositories = [policy.image_backup.repository] if policy.image_backup else []
    if policy.archive is not None:
        repositories.append(policy.archive.repository)
    return AuthorizeInput(
        workflow=f"{what} {policy.name}",
        regions=list(dict.fromkeys(regions)),
        role_arns=list(dict.fromkeys(roles)),
        account_ids=account_ids,
        repositories=repositories,
    )
