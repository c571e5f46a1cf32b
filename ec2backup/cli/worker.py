"""`ec2backup worker`: run the orchestrator (workflows and control-plane activities)."""

from __future__ import annotations

import typer

from ec2backup.cli.common import run


def register(app: typer.Typer) -> None:
    @app.command("worker")
    def worker(
        temporal_address: str = typer.Option(None, "--temporal-address"),
        namespace: str = typer.Option(None, "--namespace"),
        region: list[str] = typer.Option(
            [],
            "--region",
            help="Regions the janitor sweeps (default: the configuration's regions and home)",
        ),
        no_schedules: bool = typer.Option(
            False, "--no-schedules", help="Do not install the janitor schedule"
        ),
    ) -> None:
        """Run the orchestrator (workflows + control-plane activities on queue `ec2backup`)."""
        import logging

        from ec2backup import config
        from ec2backup.installation import home_region
        from ec2backup.orchestrator import run_worker

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        settings = config.load()
        run(
            run_worker(
                temporal_address,
                namespace,
                region or sorted({home_region(), *settings.regions}),
                install_schedules=not no_schedules and settings.janitor.enabled,
            )
        )
