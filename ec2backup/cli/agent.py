"""`ec2backup agent`: what a worker instance's user-data runs."""

from __future__ import annotations

import asyncio
import logging

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
    ) -> None:
        """Run the worker agent (the data mover) on this instance."""
        from ec2backup import aws
        from ec2backup.temporal import agent_credentials
        from worker_agent.agent import run_agent

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        overrides = (
            agent_credentials(credentials_secret, aws.default_region(credentials_region) or "")
            if credentials_secret
            else None
        )
        asyncio.run(run_agent(task_queue, temporal_address, namespace, overrides))
