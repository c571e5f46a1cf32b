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
        session_secret: str = typer.Option(
            None,
            "--session-secret",
            help="The session's Secrets Manager secret: the keys of the Temporal payloads "
            "(read with the instance role; without it, the installation secret's)",
        ),
        session_secret_region: str = typer.Option(
            None, "--session-secret-region", help="Region of --session-secret"
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
        if session_secret:
            from ec2backup import payloads
            from ec2backup.workers import wait_session_keyring

            region = aws.default_region(session_secret_region) or ""
            payloads.use_keyring(wait_session_keyring(session_secret, region))
        asyncio.run(run_agent(task_queue, temporal_address, namespace, overrides))
