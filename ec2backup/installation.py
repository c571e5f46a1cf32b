"""The installation key: one random 256-bit key per ec2backup installation.

It encrypts snapshot metadata tags (and, later, Temporal payloads). It is stored only in AWS
Secrets Manager (encrypted there with KMS), in the backup account's home Region, under
`ec2backup/installation`; it never appears in tags, payloads, logs or command lines.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import threading
from typing import Any, Literal

from ec2backup import aws, crypto
from ec2backup.errors import UserError

INSTALLATION_SECRET = "ec2backup/installation"
DEFAULT_HOME_REGION = "us-east-1"

_cached: dict[str, bytes] = {}
_lock = threading.Lock()


def home_region() -> str:
    """The configuration's `home_region` (or `EC2BACKUP_HOME_REGION`); without one, the Region
    the AWS CLI would use; else us-east-1."""
    from ec2backup import config

    return config.load().home_region or aws.default_region() or DEFAULT_HOME_REGION


class InstallationKeyMissing(UserError):
    """No installation key in the home Region: `ec2backup setup` creates it, nothing else
    does (an orchestrator pointed at the wrong Region must not fork the installation)."""


def installation_key(create: bool = False) -> bytes:
    """Load the installation key from the home Region. Only `create` (ec2backup setup)
    creates it on a miss; everyone else fails with one line naming the Region."""
    region = home_region()
    with _lock:
        if region in _cached:
            return _cached[region]
        sm = aws.client("secretsmanager", region)
        try:
            value = sm.get_secret_value(SecretId=INSTALLATION_SECRET)["SecretString"]
        except sm.exceptions.ResourceNotFoundException:
            if not create:
                raise InstallationKeyMissing(
                    f"installation key {INSTALLATION_SECRET} not found in the home Region "
                    f"{region}: run `ec2backup setup` once (or set home_region in the "
                    "configuration to the Region that holds it)"
                ) from None
            value = json.dumps({"key": base64.b64encode(crypto.random_key()).decode()})
            try:
                sm.create_secret(
                    Name=INSTALLATION_SECRET,
                    SecretString=value,
                    Description="ec2backup installation key (tags, payloads)",
                )
            except sm.exceptions.ResourceExistsException:  # a concurrent setup won the race
                value = sm.get_secret_value(SecretId=INSTALLATION_SECRET)["SecretString"]
        key = base64.b64decode(json.loads(value)["key"])
        _cached[region] = key
        return key


def installation_secret() -> dict[str, Any]:
    """The whole installation secret (the key, and the payload keys: ec2backup.payloads)."""
    installation_key()  # fails in one line when there is none
    sm = aws.client("secretsmanager", home_region())
    return dict(json.loads(sm.get_secret_value(SecretId=INSTALLATION_SECRET)["SecretString"]))


def write_installation_secret(doc: dict[str, Any]) -> None:
    """Replace the installation secret's value (rotation); the key itself never changes."""
    if base64.b64decode(doc["key"]) != installation_key():
        raise UserError("installation secret: the installation key must not change")
    sm = aws.client("secretsmanager", home_region())
    sm.put_secret_value(SecretId=INSTALLATION_SECRET, SecretString=json.dumps(doc))


def replicate_installation_key(regions: list[str]) -> list[str]:
    """Replicate the installation key to these Regions (besides the home Region); returns
    the Regions newly added. Idempotent."""
    home = home_region()
    sm = aws.client("secretsmanager", home)
    have = {
        r["Region"]
        for r in sm.describe_secret(SecretId=INSTALLATION_SECRET).get("ReplicationStatus", [])
    }
    missing = sorted({r for r in regions if r != home} - have)
    if missing:
        sm.replicate_secret_to_regions(
            SecretId=INSTALLATION_SECRET,
            AddReplicaRegions=[{"Region": r} for r in missing],
            ForceOverwriteReplicaSecret=False,
        )
    return missing


# ---- the installation id: which temporary resources are this installation's ------------------
# Every temporary resource (worker instances and volumes, session secrets, a restore's pending
# volumes/instances/images and temporary snapshots) carries it; cleanup and the Janitor act only
# on resources carrying their own, so two installations sharing an account (prod and staging,
# a test install) never sweep each other's work. Derived from the installation key: public,
# stable, and meaningless without the key.
INSTALLATION_TAG = "ec2backup:installation"
INSTALLATION_ID_CONTEXT = "ec2backup installation id v1"


def installation_id() -> str:
    return id_from_key(installation_key())


def id_from_key(key: bytes) -> str:
    # 64 bits: installations sharing an account are few; a collision only merges two sweeps
    return crypto.keyed_hash(crypto.derive_key(key, INSTALLATION_ID_CONTEXT), b"")[:8].hex()


def installation_tag() -> dict[str, str]:
    return {"Key": INSTALLATION_TAG, "Value": installation_id()}


def installation_filter() -> dict[str, Any]:
    """An EC2 Describe* filter: only this installation's resources."""
    return {"Name": f"tag:{INSTALLATION_TAG}", "Values": [installation_id()]}


def is_ours(tags: list[dict[str, str]] | None) -> bool:
    return any(t["Key"] == INSTALLATION_TAG and t["Value"] == installation_id() for t in tags or [])


# ---- what the installation knows: repositories and places (Region + account role) -----------
# The catalog (`ec2backup.catalog`) resolves a restore point id from durable sources only: the
# encrypted tags of snapshot sets in every place the installation backs up or replicates to,
# and every repository it writes. Both lists live beside the installation key, in Secrets
# Manager of the home Region: one secret per entry (created once, never rewritten, so two
# orchestrators cannot lose each other's entries), named by a keyed hash of the entry so no
# repository URL, Region or role appears in plaintext; the value (KMS-encrypted by Secrets
# Manager) holds the entry itself.
KNOWN_PREFIX = "ec2backup/known"
KNOWN_CONTEXT = "ec2backup known resources v1"
KnownKind = Literal["repository", "place"]

_remembered: set[str] = set()


def _known_name(kind: KnownKind, entry: dict[str, str | None], key: bytes) -> str:
    text = json.dumps(entry, sort_keys=True)
    digest = hmac.new(crypto.derive_key(key, KNOWN_CONTEXT), text.encode(), "sha256").hexdigest()
    return f"{KNOWN_PREFIX}/{kind}/{digest[:40]}"


def _remember(kind: KnownKind, entry: dict[str, str | None]) -> None:
    key = installation_key()
    name = _known_name(kind, entry, key)
    if name in _remembered:
        return
    sm = aws.client("secretsmanager", home_region())
    # Remembered before (by this or another orchestrator): nothing to do.
    with contextlib.suppress(sm.exceptions.ResourceExistsException):
        sm.create_secret(
            Name=name,
            SecretString=json.dumps(entry, sort_keys=True),
            Description=f"ec2backup: a {kind} this installation uses (for the catalog)",
        )
    _remembered.add(name)


def remember_repository(url: str) -> None:
    """Record a repository (hot or archive) the installation writes to; idempotent."""
    _remember("repository", {"url": url})


def remember_place(region: str, account_role_arn: str | None) -> None:
    """Record a Region and account (its role; None: the backup account) holding snapshot sets
    or replicas of this installation; idempotent."""
    _remember("place", {"region": region, "account_role_arn": account_role_arn})


def _known(kind: KnownKind) -> list[dict[str, str | None]]:
    sm = aws.client("secretsmanager", home_region())
    found: list[dict[str, str | None]] = []
    kwargs: dict[str, Any] = {"Filters": [{"Key": "name", "Values": [f"{KNOWN_PREFIX}/{kind}/"]}]}
    while True:
        page = sm.list_secrets(**kwargs)
        for secret in page.get("SecretList", []):
            if not str(secret.get("Name", "")).startswith(f"{KNOWN_PREFIX}/{kind}/"):
                continue  # the name filter matches prefixes case-insensitively
            value = sm.get_secret_value(SecretId=secret["ARN"])["SecretString"]
            found.append(json.loads(value))
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    return found


def known_repositories() -> list[str]:
    return sorted({str(e["url"]) for e in _known("repository") if e.get("url")})


def known_places() -> list[tuple[str, str | None]]:
    places = {(str(e["region"]), e.get("account_role_arn")) for e in _known("place")}
    return sorted(places, key=lambda p: (p[0], p[1] or ""))


def remember_all(repositories: list[str], places: list[tuple[str, str | None]]) -> str | None:
    """What `policy apply` and `repo init` remember, best effort, before any session ran
    (sessions remember the same again). None when done; otherwise why not, for a note on
    stderr (e.g. no installation key yet: `ec2backup setup` creates it)."""
    try:
        installation_key(create=False)
        for url in repositories:
            remember_repository(url)
        for region, role in places:
            remember_place(region, role)
    except Exception as exc:  # never fail the command for the catalog's sake
        return " ".join(str(exc).split()) or type(exc).__name__
    return None
