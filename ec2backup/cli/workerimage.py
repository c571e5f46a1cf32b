"""`ec2backup worker-image publish` (ec2backup.workerimage)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

worker_image_app = typer.Typer(
    help="The wheelhouse worker instances install the agent from.", no_args_is_help=True
)


def register(app: typer.Typer) -> None:
    app.add_typer(worker_image_app, name="worker-image")

    @worker_image_app.command("publish")
    def publish(
        to: str = typer.Option(..., "--to", help="s3://BUCKET[/PREFIX] of the installation"),
        arch: str = typer.Option("x86_64", "--arch", help="x86_64|arm64: the workers' CPUs"),
        wheel: Path = typer.Option(
            None, "--wheel", help="The ec2backup wheel (default: built from this checkout)"
        ),
    ) -> None:
        """Build the agent's wheelhouse (the product and its dependencies for the workers'
        platform) and upload it; prints the `wheelhouse_url` to configure."""
        from ec2backup import workerimage

        url = workerimage.publish(
            to, arch, wheel, progress=lambda line: print(line, file=sys.stderr, flush=True)
        )
        print(url)
