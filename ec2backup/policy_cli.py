"""`ec2backup policy schema | validate`: policy files, checked before anything uses them."""

from __future__ import annotations

import json
from pathlib import Path

import typer

policy_app = typer.Typer(help="Backup policies (YAML or JSON files).", no_args_is_help=True)


@policy_app.command("schema")
def policy_schema() -> None:
    """Print the policy file's JSON schema."""
    from ec2backup.policy import Policy

    print(json.dumps(Policy.model_json_schema(), indent=2))


@policy_app.command("validate")
def policy_validate(
    file: Path = typer.Argument(..., help="Policy file (.yaml, .yml, .json)"),
) -> None:
    """Check a policy file; the first problem is one line naming the field (and YAML line)."""
    from ec2backup.policy import load_policy

    policy = load_policy(file)
    crons = ", ".join(policy.schedule.cron_expressions())
    print(
        f"policy {policy.name} is valid: {len(policy.selection.regions)} Region(s), "
        f"schedule {crons} ({policy.schedule.time_zone})"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
