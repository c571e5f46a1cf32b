"""`ec2backup lab ...`: mounted from the `ec2backup_lab` package when the `lab` extra is
installed (it brings moto); a production install says how to get it instead."""

from __future__ import annotations

import typer

from ec2backup.errors import UserError

# One line on stderr, exit 2: what a production install (no extras) answers to `lab ...`.
LAB_EXTRA_HINT = "the lab is not installed: pip install 'ec2backup[lab]' (checkout: -e '.[lab]')"


def register(app: typer.Typer) -> None:
    try:
        import moto  # noqa: F401  (the lab's control plane; absent from a production install)

        from ec2backup_lab.cli import lab_app
    except ImportError as exc:
        missing = exc.name or "moto"
        hint = f"{LAB_EXTRA_HINT} (no module {missing!r})"

        @app.command(
            "lab",
            help="The local AWS lab (needs the `lab` extra).",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        )
        def _missing(ctx: typer.Context) -> None:
            raise UserError(hint)

        return
    app.add_typer(lab_app, name="lab")
