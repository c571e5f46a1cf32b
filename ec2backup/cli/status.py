"""`ec2backup status`: the last run of every applied policy and the next one."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from rich.table import Table

from ec2backup.cli.common import client as temporal_client
from ec2backup.cli.common import run
from ec2backup.cli.format import status_text, table_console, when_text
from ec2backup.cli.output import json_output
from ec2backup.views import policies_status


async def _rows() -> list[dict[str, Any]]:
    return await policies_status(await temporal_client())


def not_succeeded(rows: list[dict[str, Any]]) -> list[str]:
    """One line per policy whose last run (or last archive run) was not fully successful.
    Running, never run and unknown (history gone) runs are no cause."""
    lines = []
    for r in rows:
        if r["last_status"] in ("failed", "canceled"):
            lines.append(f"policy {r['policy']}: last run {r['last_run_id']} {status_text(r)}")
        archive = str(r.get("archive_last_status") or "")
        if archive.startswith(("failed", "canceled", "terminated", "timed_out")):
            lines.append(f"policy {r['policy']}: last archive run {archive}")
    return lines


def register(app: typer.Typer) -> None:
    @app.command("status")
    def status(as_json: bool = typer.Option(False, "--json")) -> None:
        """The last run of every applied policy (succeeded, failed, running) and the next.
        Exits 1 when the last run of any policy was not fully successful."""
        rows = run(_rows())
        causes = not_succeeded(rows)
        if json_output(as_json):
            print(json.dumps(rows, indent=2))
            _exit_for(causes)
            return
        table = Table("policy", "paused", "last run", "status", "instances", "next run", "archive")
        for r in rows:
            archive = ""
            if r.get("archive_last_status"):
                archive = f"{r['archive_last_status']}; next {when_text(r['archive_next_run'])}"
            table.add_row(
                r["policy"],
                "yes" if r["paused"] else "",
                when_text(r["last_run_start"]),
                status_text(r),
                "" if r["instances"] is None else str(r["instances"]),
                when_text(r["next_run"]),
                archive,
            )
        table_console().print(table)
        _exit_for(causes)


def _exit_for(causes: list[str]) -> None:
    """Exit 1 when any policy's last run was not fully successful (for cron and monitoring
    checks), after the table: one line per cause on stderr."""
    for line in causes:
        print(line, file=sys.stderr)
    if causes:
        raise typer.Exit(1)
