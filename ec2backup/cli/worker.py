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
        metrics_port: int = typer.Option(
            None,
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus metrics (SDK and product) on this port (docs/observability.md)",
        ),
        log_format: str = typer.Option(
            None, "--log-format", help="text or json (default $EC2BACKUP_LOG_FORMAT, else text)"
        ),
    ) -> None:
        """Run the orchestrator (workflows + control-plane activities on queue `ec2backup`)."""
        from ec2backup import config, observability
        from ec2backup.installation import home_region
        from ec2backup.orchestrator import run_worker

        # Before any client: the process's one Runtime serves the metrics.
        observability.configure(observability.ORCHESTRATOR_SERVICE, metrics_port, log_format)
        settings = config.load()
        run(
            run_worker(
                temporal_address,
                namespace,
                region or sorted({home_region(), *settings.regions}),
                install_schedules=not no_schedules and settings.janitor.enabled,
            )
        )
