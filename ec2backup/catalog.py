"""The catalog: every restore point of this installation and where it lives, so that a restore
point id (or a unique prefix of one) is all a restore or an archive needs.

Its sources are durable and need no Temporal history (docs/architecture.md, "The catalog"):
- the encrypted tags of snapshot sets (`ec2backup.snapshots.catalog`) in every place (Region and
  account) the installation remembers (`installation.known_places`): snapshot sets and replica
  sets; a set's tags also name the image-level restore point made from it, once committed;
- every repository the installation remembers (`installation.known_repositories`): its restore
  points, hot (`backup`) or archived (`archive`, packs in a Glacier class).

Problems (a tag that does not authenticate, a repository that is gone or whose password does not
open it) are reported per source and never stop the listing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from ec2backup import installation, snapshots
from ec2backup.errors import NotFoundError, UserError

RestorePointKind = Literal["snapshot", "replica", "backup", "archive"]
# Restore sources from cheapest to dearest: snapshots need no data copy; a backup is copied back
# from S3 Standard; an archive must first be retrieved from a Glacier class (hours).
SOURCE_ORDER = ("snapshot", "backup", "archive")
# A prefix shorter than this would match too much to be meant (restic's rule for ids).
MIN_PREFIX = 4


class CatalogEntry(BaseModel):
    """One restore point in one place."""

    id: str
    kind: RestorePointKind
    created: dt.datetime
    instance_id: str | None = None
    volumes: list[str] = Field(default_factory=list)  # device names
    where: str  # `<region>/<account>` for snapshot sets, the repository URL for backups
    region: str | None = None  # snapshot sets: where they are; backups: the instance's Region
    account: str | None = None
    account_role_arn: str | None = None  # the role the place was reached through
    repository: str | None = None
    snapshot_set_id: str | None = None  # backups: the set their blocks were read from
    backup_id: str | None = None  # snapshot sets: the image-level restore point made from it
    complete: bool = True
    restores: str
    storage_class: str | None = None  # archives: the Glacier class of their data
    retrieval_needed: bool | None = None  # archives: the data must be retrieved first
    archived_from: str | None = None  # archives: the hot restore point this copies
    # backups: the ransomware signal's verdict (clean | anomaly | no-baseline | resolved: an
    # anomaly an operator resolved, with their reason; None: a backup from before the signal
    # existed) and why; `last_clean`: the instance's newest restore point before its first
    # unresolved anomaly (ec2backup.anomaly)
    anomaly: str | None = None
    anomaly_reasons: list[str] = Field(default_factory=list)
    anomaly_resolution: str | None = None
    last_clean: bool = False


class CatalogProblem(BaseModel):
    source: str  # a snapshot id, a place or a repository URL
    problem: str


class Catalog(BaseModel):
    entries: list[CatalogEntry] = Field(default_factory=list)
    problems: list[CatalogProblem] = Field(default_factory=list)


def _snapshot_entries(
    region: str, role: str | None, key: bytes, instance_id: str | None
) -> tuple[list[CatalogEntry], list[CatalogProblem]]:
    found, problems = snapshots.catalog(region, role, key, instance_id=instance_id)
    entries = [
        CatalogEntry(
            id=e.set_id,
            kind="replica" if e.replica else "snapshot",
            created=e.created,
            instance_id=e.instance_id,
            volumes=[s.device for s in e.snapshots],
            where=f"{e.region}/{e.account}",
            region=e.region,
            account=e.account,
            account_role_arn=role,
            repository=e.backup_repository,
            backup_id=e.backup_id,
            complete=e.complete,
            restores="instance, volumes" if e.complete else "volumes",
        )
        for e in found
    ]
    return entries, [CatalogProblem(source=p.snapshot_id, problem=p.problem) for p in problems]


def build(
    installation_key: bytes,
    password: bytes | None,
    *,
    instance_id: str | None = None,
    places: Iterable[tuple[str, str | None]] = (),
    repositories: Iterable[str] = (),
    known_places: bool = True,
    known_repositories: bool = True,
) -> Catalog:
    """Every restore point in the given places and repositories, and (unless told not to) in
    every place and repository the installation remembers."""
    out = Catalog()
    remembered = installation.known_places() if known_places else []
    all_places = dict.fromkeys([*places, *remembered])
    seen_accounts: set[tuple[str, str]] = set()
    for region, role in all_places:
        try:
            entries, problems = _snapshot_entries(region, role, installation_key, instance_id)
        except Exception as exc:
            where = f"{region}/{role or 'backup account'}"
            out.problems.append(CatalogProblem(source=where, problem=_reason(exc)))
            continue
        # One account reached through two roles lists the same sets: keep them once.
        account = entries[0].account if entries else None
        if account is not None:
            if (region, account) in seen_accounts:
                continue
            seen_accounts.add((region, account))
        out.entries += entries
        out.problems += problems
    repos = installation.known_repositories() if known_repositories else []
    for url in dict.fromkeys([*repositories, *repos]):
        if password is None:
            out.problems.append(
                CatalogProblem(
                    source=url, problem="no repository password (EC2BACKUP_REPO_PASSWORD)"
                )
            )
            continue
        try:
            out.entries += [
                e
                for e in _open_entries(url, password, None)
                if e.instance_id is not None
                and (instance_id is None or e.instance_id == instance_id)
            ]
        except Exception as exc:
            out.problems.append(CatalogProblem(source=url, problem=_reason(exc)))
    # Per instance, newest first.
    out.entries.sort(key=lambda e: (e.instance_id or "", -e.created.timestamp()))
    mark_last_clean(out.entries)
    return out


def mark_last_clean(entries: list[CatalogEntry]) -> None:
    """Per instance, flag its newest backup before its first anomaly (`last_clean`): what
    follows an attack holds the attacker's blocks even where the signal stayed quiet."""
    by_instance: dict[str, list[CatalogEntry]] = {}
    for e in entries:
        if e.kind == "backup" and e.instance_id is not None:
            by_instance.setdefault(e.instance_id, []).append(e)
    for group in by_instance.values():
        clean: CatalogEntry | None = None
        for e in sorted(group, key=lambda x: x.created):
            if e.anomaly == "anomaly":
                break
            clean = e
        if clean is not None:
            clean.last_clean = True


def last_clean(catalog: Catalog, instance_id: str) -> CatalogEntry:
    """The restore point `restore instance --last-clean INSTANCE_ID` restores."""
    backups = [e for e in catalog.entries if e.instance_id == instance_id and e.kind == "backup"]
    if not backups:
        raise NotFoundError(f"instance {instance_id}: no image-level backup found")
    found = next((e for e in backups if e.last_clean), None)
    if found is None:
        first = min(backups, key=lambda e: e.created)
        raise NotFoundError(
            f"instance {instance_id}: no clean restore point (its first backup {first.id[:12]} "
            f"is already an anomaly: {'; '.join(first.anomaly_reasons)})"
        )
    return found


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def cheapest_source(
    sets: list[CatalogEntry], found: list[CatalogEntry]
) -> tuple[str, CatalogEntry, str]:
    """(source, entry, why): snapshot if the set (or the set a backup was read from) is still
    complete, else the backup, else an archived copy."""
    kinds = {e.kind: e for e in found}
    backup = kinds.get("backup")
    if "snapshot" in kinds or "replica" in kinds:
        entry = kinds.get("snapshot") or kinds["replica"]
        return "snapshot", entry, "a snapshot set: restored from its snapshots"
    if backup is not None and backup.snapshot_set_id:
        usable = [
            e
            for e in sets
            if e.id == backup.snapshot_set_id and e.kind == "snapshot" and e.complete
        ]
        if usable:
            why = (
                f"the snapshot set {usable[0].id} it was read from still exists: restored from "
                "its snapshots (no data to copy back)"
            )
            return "snapshot", usable[0], why
    if backup is not None:
        return "backup", backup, f"restored from the backup in {backup.repository}"
    archived = kinds["archive"]
    return "archive", archived, f"only an archived copy exists ({archived.storage_class})"


# ---- resolving one id ------------------------------------------------------------------------
class Located(BaseModel):
    """Where a restore reads a restore point from, and why that source."""

    source: Literal["snapshot", "backup", "archive"]
    restore_point_id: str  # a set id (snapshot) or a repository restore point id
    repository: str | None = None
    region: str | None = None  # snapshot: where the set is
    account_role_arn: str | None = None  # snapshot: the role of the set's account
    why: str


def _listed_ids(url: str) -> list[str]:
    """Restore point ids of a repository from its object names alone (no password needed)."""
    from ec2backup.repository.backend import open_backend
    from ec2backup.repository.repo import KIND_PREFIX

    prefix = KIND_PREFIX["restorepoint"]
    return [name.rsplit("/", 1)[1] for name, _ in open_backend(url).list(prefix)]


def _open_entries(url: str, password: bytes | None, ids: set[str] | None) -> list[CatalogEntry]:
    """The restore points `ids` (all when None) of one repository, as catalog entries; one
    line naming the repository when it cannot be opened."""
    from ec2backup.repository.repo import Repository

    try:
        repo = Repository.open(url, password)
    except NotFoundError as exc:
        raise NotFoundError(f"repository {url} is gone: {exc}") from exc
    except UserError as exc:
        raise UserError(f"repository {url}: {exc} (is the repository password right?)") from exc
    archive_class = repo.config.data_storage_class
    entries = []
    if ids is None:
        points = repo.list_restore_points()  # resolutions applied
    else:
        points = [repo.load_restore_point(rid) for rid in sorted(ids)]
    for rid, rp in points:
        entries.append(
            CatalogEntry(
                id=rid,
                kind="archive" if archive_class else "backup",
                created=rp.time,
                instance_id=rp.source.instance_id,
                volumes=[v.device or v.name for v in rp.volumes],
                where=url,
                region=rp.source.region,
                account=rp.source.account,
                repository=url,
                snapshot_set_id=rp.source.snapshot_set_id,
                restores="instance, volumes, images",
                storage_class=archive_class,
                retrieval_needed=bool(archive_class),
                archived_from=rp.tags.get("archived_from"),
                anomaly=(
                    ("resolved" if rp.anomaly.resolved else rp.anomaly.verdict)
                    if rp.anomaly
                    else None
                ),
                anomaly_reasons=list(rp.anomaly.reasons) if rp.anomaly else [],
                anomaly_resolution=rp.anomaly.resolved.reason
                if rp.anomaly and rp.anomaly.resolved
                else None,
            )
        )
    return entries


def _archive_repositories(urls: Iterable[str]) -> list[str]:
    """Which of the repositories are archives (their plaintext config says so)."""
    from ec2backup.repository.backend import open_backend
    from ec2backup.repository.repo import CONFIG_NAME, RepoConfig

    out = []
    for url in urls:
        try:
            config = RepoConfig.model_validate_json(open_backend(url).get(CONFIG_NAME))
        except Exception:
            continue  # gone or unreadable: reported when (and if) the id is searched there
        if config.data_storage_class:
            out.append(url)
    return out


def locate(
    ref: str,
    installation_key: bytes,
    password: bytes | None,
    *,
    source: str | None = None,
    places: Iterable[tuple[str, str | None]] = (),
    repositories: Iterable[str] = (),
) -> Located:
    """Resolve `ref` (an id or a unique prefix) to the source a restore reads: the one asked
    for, or the cheapest available (snapshot, then backup, then archive).

    Looks first at the snapshot sets of every known place (their tags also name the backup made
    from each set and its repository), then at the restore point object names of every known
    repository (no password needed), and opens only the repositories that hold a match. Errors
    are one line naming the id, and the repository when that is what fails."""
    if len(ref) < MIN_PREFIX:
        raise UserError(f"restore point {ref!r}: give at least {MIN_PREFIX} characters of the id")
    found: list[CatalogEntry] = []
    sets: list[CatalogEntry] = []
    for region, role in dict.fromkeys([*places, *installation.known_places()]):
        try:
            entries, _problems = _snapshot_entries(region, role, installation_key, None)
        except Exception:
            continue  # an unreachable place cannot hold the answer we can use now
        sets += entries
    found += [e for e in sets if e.id.startswith(ref)]
    repos = list(dict.fromkeys([*repositories, *installation.known_repositories()]))
    # Backups named by the tags of the sets they were read from: their repository is known.
    by_tags = {e.backup_id: e.repository for e in sets if e.backup_id and e.repository}
    hits: dict[str, set[str]] = {}
    for backup_id, url in by_tags.items():
        if backup_id.startswith(ref):
            hits.setdefault(url, set()).add(backup_id)
    if not found and not hits:
        for url in repos:
            try:
                ids = {i for i in _listed_ids(url) if i.startswith(ref)}
            except Exception:
                continue
            if ids:
                hits.setdefault(url, set()).update(ids)
    for url, ids in hits.items():
        try:
            found += _open_entries(url, password, ids)
        except UserError as exc:
            raise type(exc)(f"restore point {ref!r}: {exc}") from exc
    wants_archive = source == "archive" or (not found and source is None)
    if wants_archive:
        hot_ids = {e.id for e in found if e.kind == "backup"}
        for url in _archive_repositories(r for r in repos if r not in hits):
            try:
                copies = [
                    e
                    for e in _open_entries(url, password, None)
                    if e.id.startswith(ref)
                    or (
                        e.archived_from
                        and (e.archived_from.startswith(ref) or e.archived_from in hot_ids)
                    )
                ]
            except UserError:
                if source == "archive":
                    raise
                continue
            found += copies
    if not found:
        raise NotFoundError(
            f"restore point {ref!r} not found: no snapshot set in the installation's places and "
            "no restore point in its repositories has this id"
        )
    origins = {e.id for e in found if e.kind != "archive"}
    ids = {e.id for e in found if not (e.kind == "archive" and e.archived_from in origins)}
    ids -= {e.id for e in found if e.kind in ("snapshot", "replica") and e.backup_id in ids}
    if len(ids) > 1:
        listed = ", ".join(
            f"{e.id} ({e.kind} of {e.instance_id}, {e.created:%Y-%m-%d %H:%M})"
            for e in {e.id: e for e in found if e.id in ids}.values()
        )
        raise UserError(f"restore point {ref!r} is ambiguous: it matches {listed}")
    if source is None:
        chosen, entry, why = cheapest_source(sets, found)
    else:
        chosen, entry, why = _asked(sets, found, source, ref)
    return Located(
        source=chosen,  # type: ignore[arg-type]
        restore_point_id=entry.id,
        repository=entry.repository if chosen != "snapshot" else None,
        region=entry.region if chosen == "snapshot" else None,
        account_role_arn=entry.account_role_arn if chosen == "snapshot" else None,
        why=why,
    )


def _asked(
    sets: list[CatalogEntry], found: list[CatalogEntry], source: str, ref: str
) -> tuple[str, CatalogEntry, str]:
    if source == "snapshot":
        for e in found:
            if e.kind in ("snapshot", "replica"):
                return "snapshot", e, "asked for: the snapshot set"
        for e in found:
            own = [s for s in sets if s.id == e.snapshot_set_id and s.kind == "snapshot"]
            if own:
                return "snapshot", own[0], f"asked for: the snapshot set {own[0].id} of {e.id}"
        raise NotFoundError(f"restore point {ref!r}: its snapshot set no longer exists")
    kind = "backup" if source == "backup" else "archive"
    for e in found:
        if e.kind == kind:
            return source, e, f"asked for: the {kind} in {e.repository}"
    if kind == "backup":
        for e in found:
            if e.kind in ("snapshot", "replica") and e.backup_id and e.repository:
                backup = CatalogEntry(
                    id=e.backup_id,
                    kind="backup",
                    created=e.created,
                    where=e.repository,
                    repository=e.repository,
                    restores="instance, volumes, images",
                )
                return "backup", backup, f"asked for: the backup of {e.id} in {e.repository}"
    raise NotFoundError(f"restore point {ref!r}: no {kind} of it exists")
