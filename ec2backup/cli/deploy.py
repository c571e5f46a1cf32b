"""`ec2backup setup` and `ec2backup doctor` (ec2backup.deploy)."""

from __future__ import annotations

import json
import sys

import typer

from ec2backup.cli.common import run
from ec2backup.cli.output import output_format


def register(app: typer.Typer) -> None:
    @app.command("setup")
    def setup(
        rotate_payload_key: bool = typer.Option(
            False,
            "--rotate-payload-key",
            help="Add a new Temporal payload key and make it current (older keys still "
            "decode; wrapped by temporal.payload_kms_key when configured)",
        ),
    ) -> None:
        """Make the installation ready (idempotent): search attributes, the installation key
        in the home Region and its replicas, the Janitor schedule."""
        from ec2backup import config, deploy

        steps = run(deploy.setup(config.load(), rotate_payload_key))
        if output_format() == "json":
            print(
                json.dumps(
                    [{"step": s.name, "action": s.action, "detail": s.detail} for s in steps],
                    indent=2,
                )
            )
            return
        for step in steps:
            print(step.line())

    @app.command("doctor")
    def doctor(
        verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list what passed"),
    ) -> None:
        """Check the configuration, Temporal, every account role, the workers' AMI, subnets
        and instance profile, and every repository; one line per problem, exit 1 if any."""
        from ec2backup import config, deploy

        report = run(deploy.doctor(config.load()))
        if output_format() == "json":
            print(json.dumps({"problems": report.problems, "passed": report.passed}, indent=2))
        else:
            if verbose:
                for line in report.passed:
                    print(f"ok       {line}")
            for line in report.problems:
                print(f"PROBLEM  {line}")
        if report.problems:
            print(f"doctor: {len(report.problems)} problem(s)", file=sys.stderr)
            raise typer.Exit(1)
        print(f"doctor: no problems ({len(report.passed)} checks passed)", file=sys.stderr)
