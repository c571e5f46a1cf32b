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
    ) -> None:
        """Run the worker agent (the data mover) on this instance."""
        from worker_agent.agent import run_agent

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        asyncio.run(run_agent(task_queue, temporal_address, namespace))
