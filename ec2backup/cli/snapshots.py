"""`ec2backup snapshots list`: cloud-native restore points rebuilt from snapshot tags alone."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from ec2backup.cli.output import json_output

snapshots_app = typer.Typer(
    help="Cloud-native restore points (from snapshot tags).", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(snapshots_app, name="snapshots")

    @snapshots_app.command("list")
    def snapshots_list(
        instance: str = typer.Option(None, "--instance", help="Only this instance"),
        region: str = typer.Option(None, "--region"),
        account_role_arn: str = typer.Option(None, "--account-role-arn"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Restore points rebuilt from the encrypted snapshot tags alone."""

        from ec2backup import installation, snapshots
        from ec2backup.cli.common import region as resolve_region

        region = resolve_region(region)
        entries, problems = snapshots.catalog(
            region,
            account_role_arn,
            installation.installation_key(create=False),
            instance_id=instance,
        )
        for p in problems:
            console.print(f"[yellow]skipped {p.snapshot_id}: {p.problem}[/yellow]")
        if json_output(as_json):
            print(
                json.dumps(
                    {
                        "restore_points": [e.model_dump(mode="json") for e in entries],
                        "problems": [p.model_dump() for p in problems],
                    },
                    indent=2,
                )
            )
            return
        table = Table("set", "instance", "created", "policy", "snapshots", "replica", "complete")
        for e in entries:
            table.add_row(
                e.set_id,
                e.instance_id,
                e.created.isoformat(timespec="seconds"),
                e.policy,
                ", ".join(s.snapshot_id for s in e.snapshots),
                "yes" if e.replica else "",
                "yes" if e.complete else "NO",
            )
        Console().print(table)
