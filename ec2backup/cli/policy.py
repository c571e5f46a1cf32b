"""`ec2backup policy ...`: policy files (schema, validate) and their Temporal Schedules (apply,
list, show, run, pause, resume, delete), and `retention` on demand."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.table import Table

from ec2backup.cli.output import json_output

if TYPE_CHECKING:
    from ec2backup.policy import Policy

policy_app = typer.Typer(help="Backup policies (YAML or JSON files).", no_args_is_help=True)


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy file's JSON schema."""
    from ec2backup.policy import Policy

    print(json.dumps(Policy.model_json_schema(), indent=2))


@policy_app.command("validate")
def policy_validate(
    file: Path = typer.Argument(..., help="Policy file (.yaml, .yml, .json)"),
) -> None:
    """Check a policy file; the first problem is one line naming the field (and YAML line)."""
    from ec2backup.policy import load_policy

    policy = load_policy(file)
    crons = ", ".join(policy.schedule.cron_expressions())
    print(
        f"policy {policy.name} is valid: {len(policy.selection.regions)} Region(s), "
        f"schedule {crons} ({policy.schedule.time_zone})"
    )


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _client() -> Any:
    from ec2backup.errors import UserError
    from ec2backup.temporal import connect

    try:
        return await connect()
    except Exception as exc:
        raise UserError(f"cannot reach Temporal: {exc}") from None


def check_repository(policy: Any) -> None:
    """A policy whose repository does not exist would fail every run: refuse it at apply."""
    from ec2backup.policy import PolicyError
    from ec2backup.repository.backend import open_backend
    from ec2backup.repository.repo import CONFIG_NAME

    if policy.image_backup is None:
        return
    url = policy.image_backup.repository
    try:
        found = open_backend(url).exists(CONFIG_NAME)
    except Exception as exc:
        raise PolicyError(f"image_backup.repository: cannot access {url}: {exc}") from None
    if not found:
        raise PolicyError(
            f"image_backup.repository: no repository at {url} "
            "(create one with `ec2backup repo init`)"
        )


@policy_app.command("apply")
def policy_apply(file: Path = typer.Argument(..., help="Policy file")) -> None:
    """Create or update the policy's Temporal Schedule (idempotent)."""
    from ec2backup import schedules
    from ec2backup.policy import load_policy

    policy = load_policy(file)
    check_repository(policy)

    async def go() -> str:
        return await schedules.apply(await _client(), policy)

    print(f"policy {policy.name}: {_run(go())}")
    _remember(policy)


def _remember(policy: Policy) -> None:
    """The catalog's sources: the policy's repositories and every place it backs up or
    replicates to (its sessions remember them too)."""
    from ec2backup import installation

    repos = [policy.image_backup.repository] if policy.image_backup else []
    repos += [policy.archive.repository] if policy.archive else []
    places = [(r, a) for r in policy.selection.regions for a in policy.selection.accounts]
    places += (
        [(t.region, t.account_role_arn) for t in policy.replication.targets]
        if (policy.replication)
        else []
    )
    problem = installation.remember_all(repos, places)
    if problem:
        print(f"note: not yet remembered for the catalog ({problem})", file=sys.stderr)


@policy_app.command("list")
def policy_list(as_json: bool = typer.Option(False, "--json")) -> None:
    """Applied policies with their next and last runs."""
    from ec2backup import schedules

    async def go() -> list[dict[str, Any]]:
        return await schedules.list_policies(await _client())

    rows = _run(go())
    if json_output(as_json):
        print(json.dumps(rows, indent=2))
        return
    table = Table("policy", "paused", "next run", "last run", "running")
    for r in rows:
        table.add_row(
            r["name"],
            "yes" if r["paused"] else "",
            r["next_run"] or "",
            r["last_run"] or "",
            str(r["running"]),
        )
    Console().print(table)


@policy_app.command("show")
def policy_show(name: str) -> None:
    """The applied policy (as JSON) and its schedule state."""
    from ec2backup import schedules

    async def go() -> dict[str, Any]:
        client = await _client()
        policy = await schedules.require(client, name)
        desc = await client.get_schedule_handle(schedules.schedule_id(name)).describe()
        return {
            "policy": policy.model_dump(mode="json"),
            "paused": desc.schedule.state.paused,
            "next_runs": [t.isoformat() for t in desc.info.next_action_times[:3]],
            "recent_runs": [a.started_at.isoformat() for a in desc.info.recent_actions],
        }

    print(json.dumps(_run(go()), indent=2))


def _schedule_op(name: str, op: str, archive: bool = False) -> None:
    """Run, pause, resume or delete a policy's schedules (the archive one follows the policy;
    `run` starts the backups, or with `archive` the archive run)."""
    from ec2backup import schedules
    from ec2backup.errors import UserError

    async def go() -> None:
        client = await _client()
        await schedules.require(client, name)
        ids = [schedules.schedule_id(name)]
        has_archive = await schedules.archive_schedule_exists(client, name)
        if op == "run" and archive:
            if not has_archive:
                raise UserError(f"policy {name} has no archive section")
            ids = [schedules.archive_schedule_id(name)]
        elif op != "run" and has_archive:
            ids.append(schedules.archive_schedule_id(name))
        for sid in ids:
            handle = client.get_schedule_handle(sid)
            if op == "run":
                await handle.trigger()
            elif op == "pause":
                await handle.pause(note="paused by `ec2backup policy pause`")
            elif op == "resume":
                await handle.unpause(note="resumed by `ec2backup policy resume`")
            else:
                await handle.delete()

    _run(go())


@policy_app.command("run")
def policy_run(
    name: str,
    archive: bool = typer.Option(False, "--archive", help="Start an archive run instead"),
) -> None:
    """Start a run now (skipped if one is still running)."""
    _schedule_op(name, "run", archive)
    print(f"policy {name}: {'archive ' if archive else ''}run requested")


@policy_app.command("pause")
def policy_pause(name: str) -> None:
    """Stop new runs (a running one goes on)."""
    _schedule_op(name, "pause")
    print(f"policy {name}: paused")


@policy_app.command("resume")
def policy_resume(name: str) -> None:
    """Let the schedule start runs again."""
    _schedule_op(name, "resume")
    print(f"policy {name}: resumed")


@policy_app.command("delete")
def policy_delete(name: str) -> None:
    """Remove the policy's schedule (backups already made stay)."""
    _schedule_op(name, "delete")
    print(f"policy {name}: deleted")


def parse_time(value: str, option: str) -> dt.datetime:
    """An ISO 8601 time (naive = UTC); a bad one is a one-line error naming the option."""
    from ec2backup.errors import UserError

    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(f"{option}: '{value}' is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@policy_app.command("retention")
def policy_retention(
    policy_ref: str = typer.Argument(..., metavar="NAME|FILE", help="Applied policy or its file"),
    now: str | None = typer.Option(
        None, "--now", help="Apply as of this ISO time (default: now); e.g. a dry run ahead"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Report, delete nothing"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Apply the policy's retention now (a `Retention` workflow), without backing anything up."""
    from temporalio.client import WorkflowFailureError

    from ec2backup import schedules
    from ec2backup.errors import UserError
    from ec2backup.models.policy import RetentionInput, RetentionOutput
    from ec2backup.policy import load_policy
    from ec2backup.progress import human_bytes
    from ec2backup.temporal import TASK_QUEUE, search_attributes
    from ec2backup.views import failure_message

    when = parse_time(now, "--now") if now else None
    path = Path(policy_ref)
    from_file = path.suffix in (".yaml", ".yml", ".json") or path.exists()

    async def go() -> RetentionOutput:
        client = await _client()
        policy = load_policy(path) if from_file else await schedules.require(client, policy_ref)
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")
        try:
            result: RetentionOutput = await client.execute_workflow(
                "Retention",
                RetentionInput(policy=policy, now=when, dry_run=dry_run),
                id=f"retention-{policy.name}-{stamp}",
                task_queue=TASK_QUEUE,
                result_type=RetentionOutput,
                search_attributes=search_attributes("retention", policy.name),
            )
        except WorkflowFailureError as exc:  # e.g. refused (future --now, not authorized)
            raise UserError(f"retention of {policy.name} failed: {failure_message(exc)}") from None
        return result

    out = _run(go())
    if json_output(as_json):
        print(out.model_dump_json(indent=2))
        return
    verb = "would delete" if out.dry_run else "deleted"
    print(
        f"policy {out.policy} retention as of {out.now.isoformat(timespec='seconds')}: "
        f"{verb} {len(out.deleted_snapshot_sets)} snapshot sets "
        f"({len(out.deleted_snapshots)} snapshots), {len(out.deleted_replica_sets)} replica sets "
        f"({len(out.deleted_replicas)} snapshots), "
        f"{len(out.forgotten_restore_points)} restore points; "
        f"kept {len(out.kept_snapshot_sets)} sets ({len(out.cbt_bases)} CBT bases), "
        f"{len(out.kept_replica_sets)} replica sets, {len(out.kept_restore_points)} restore "
        f"points; pruned {human_bytes(out.pruned_bytes)}"
    )
    for note in out.notes:
        print(f"note: {note}")


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
