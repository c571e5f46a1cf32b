"""`ec2backup agent`: what a worker instance's user-data runs."""

from __future__ import annotations

import asyncio

import typer


def register(app: typer.Typer) -> None:
    @app.command("agent")
    def agent(
        task_queue: str = typer.Option(
            ..., "--task-queue", help="Queue to poll; {instance_id} is filled in"
        ),
        temporal_address: str = typer.Option(
            None, "--temporal-address", help="host:port (default $TEMPORAL_ADDRESS)"
        ),
        namespace: str = typer.Option(None, "--namespace"),
        credentials_secret: str = typer.Option(
            None,
            "--credentials-secret",
            help="Secrets Manager secret with the Temporal API key or mTLS certificate "
            "(read with the instance role)",
        ),
        credentials_region: str = typer.Option(
            None, "--credentials-region", help="Region of --credentials-secret"
        ),
        session_secret: str = typer.Option(
            None,
            "--session-secret",
            help="The session's Secrets Manager secret: the keys of the Temporal payloads "
            "(read with the instance role; without it, the installation secret's)",
        ),
        session_secret_region: str = typer.Option(
            None, "--session-secret-region", help="Region of --session-secret"
        ),
        metrics_port: int = typer.Option(
            None,
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve Prometheus metrics (SDK and transfer) on this port",
        ),
        log_format: str = typer.Option(
            None, "--log-format", help="text or json (default $EC2BACKUP_LOG_FORMAT, else text)"
        ),
    ) -> None:
        """Run the worker agent (the data mover) on this instance."""
        from ec2backup import aws, observability
        from ec2backup.temporal import agent_credentials
        from worker_agent.agent import run_agent

        # Before any client: the process's one Runtime serves the metrics.
        observability.configure(observability.AGENT_SERVICE, metrics_port, log_format)
        overrides = (
            agent_credentials(credentials_secret, aws.default_region(credentials_region) or "")
            if credentials_secret
            else None
        )
        if session_secret:
            from ec2backup import payloads
            from ec2backup.workers import wait_session_keyring

            region = aws.default_region(session_secret_region) or ""
            payloads.use_keyring(wait_session_keyring(session_secret, region))
        asyncio.run(run_agent(task_queue, temporal_address, namespace, overrides))
