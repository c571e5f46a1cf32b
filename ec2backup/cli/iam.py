"""`ec2backup iam print ROLE`: the IAM kit's policy documents and CloudFormation template."""

from __future__ import annotations

import json
import sys

import typer

from ec2backup import iamkit
from ec2backup.errors import UserError

iam_app = typer.Typer(
    help="The IAM kit: policy documents and the CloudFormation template (docs/iam.md).",
    no_args_is_help=True,
)

# Placeholder -> the flag that fills it in (also how the note on stderr names it).
FLAGS = {
    "BackupAccountId": "--backup-account-id",
    "AWS::AccountId": "--account-id",
    "ExternalId": "--external-id",
    "RepositoryBucket": "--bucket",
    "ArchiveBucket": "--archive-bucket",
    "InstallationId": "--installation-id",
    "AgentCredentialsSecret": "--agent-credentials-secret",
    "RepositoryPasswordSecret": "--repository-password-secret",
    "OrchestratorRoleName": "--orchestrator-role-name",
    "WorkerRoleName": "--worker-role-name",
    "ProductionRoleName": "--production-role-name",
    "AWS::Partition": "--partition",
}


def render(role: iamkit.Role, trust: bool, values: dict[str, str | None]) -> tuple[str, set[str]]:
    """(what to print, placeholders left in it)."""
    if role is iamkit.Role.cloudformation:
        given = sorted(FLAGS[k] for k, v in values.items() if v is not None)
        if trust or given:
            # The template's values are its stack parameters; substituting here would leave a
            # template that no longer is one for every account.
            flags = ", ".join(given + (["--trust"] if trust else []))
            raise UserError(f"{flags}: the template takes its values as stack parameters")
        return iamkit.template(), set()
    try:
        doc = iamkit.trust(role, values) if trust else iamkit.policy(role, values)
    except iamkit.InvalidValue as exc:
        raise UserError(f"{FLAGS.get(exc.name, exc.name)}: {exc.problem}") from None
    return json.dumps(doc, indent=2) + "\n", iamkit.placeholders(doc)


def register(app: typer.Typer) -> None:
    app.add_typer(iam_app, name="iam")

    @iam_app.command("print")
    def iam_print(
        role: iamkit.Role = typer.Argument(
            ..., help="orchestrator, worker, production, or cloudformation (the template)"
        ),
        trust: bool = typer.Option(False, "--trust", help="The trust policy, not permissions"),
        backup_account_id: str = typer.Option(None, "--backup-account-id"),
        account_id: str = typer.Option(
            None, "--account-id", help="The account the document goes to (production trust)"
        ),
        external_id: str = typer.Option(None, "--external-id"),
        bucket: str = typer.Option(
            None, "--bucket", help="Repository bucket, or a name pattern (* ?) for all of them"
        ),
        archive_bucket: str = typer.Option(None, "--archive-bucket"),
        installation_id: str = typer.Option(
            None, "--installation-id", help="Only this installation's resources (default *)"
        ),
        agent_credentials_secret: str = typer.Option(None, "--agent-credentials-secret"),
        repository_password_secret: str = typer.Option(None, "--repository-password-secret"),
        orchestrator_role_name: str = typer.Option(None, "--orchestrator-role-name"),
        worker_role_name: str = typer.Option(None, "--worker-role-name"),
        production_role_name: str = typer.Option(None, "--production-role-name"),
        partition: str = typer.Option(None, "--partition", help="Default aws"),
    ) -> None:
        """Print a role's policy (or, with --trust, its trust policy) as JSON, or the
        CloudFormation template. Placeholders not given stay as ${Name} (listed on stderr)."""
        values: dict[str, str | None] = {
            "BackupAccountId": backup_account_id,
            "AWS::AccountId": account_id,
            "ExternalId": external_id,
            "RepositoryBucket": bucket,
            "ArchiveBucket": archive_bucket,
            "InstallationId": installation_id,
            "AgentCredentialsSecret": agent_credentials_secret,
            "RepositoryPasswordSecret": repository_password_secret,
            "OrchestratorRoleName": orchestrator_role_name,
            "WorkerRoleName": worker_role_name,
            "ProductionRoleName": production_role_name,
            "AWS::Partition": partition,
        }
        text, left = render(role, trust, values)
        sys.stdout.write(text)
        if left:
            names = ", ".join(f"${{{n}}} ({FLAGS.get(n, '?')})" for n in sorted(left))
            print(f"note: placeholders left: {names}", file=sys.stderr)
