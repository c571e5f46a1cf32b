"""`ec2backup lab ...`: mounted from the `ec2backup_lab` package when the `lab` extra is
installed (it carries moto); a production install says how to get it instead."""

from __future__ import annotations

import typer

from ec2backup.errors import UserError

# What a production install (`pip install ec2backup`, no extras) lacks for the lab.
LAB_EXTRA_HINT = (
    "the lab is not installed: pip install 'ec2backup[lab]' (or -e '.[lab]' in a checkout)"
)


class LabNotInstalled(UserError):
    exit_code = 2


def register(app: typer.Typer) -> None:
    try:
        from ec2backup_lab.cli import lab_app
    except ImportError as exc:
        missing = getattr(exc, "name", None) or str(exc)
        stub = typer.Typer(help="The local AWS lab (needs the `lab` extra).")

        @stub.callback(
            invoke_without_command=True,
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )
        def _missing(ctx: typer.Context) -> None:
            raise LabNotInstalled(f"{LAB_EXTRA_HINT} (missing module: {missing})")

        app.add_typer(stub, name="lab")
        return
    app.add_typer(lab_app, name="lab")
