"""The `ec2backup` command line: one module per command family, each thin (parse, call the
library, print) and each exposing `register(app)`.

Only the family a command needs is imported: `image backup` must not pay for importing
temporalio (start-up time is most of a small incremental).
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from ec2backup.errors import UserError

APP_HELP = "Image-level backup, replication, archive and restore for Amazon EC2."

# First word of the command line -> the module of `ec2backup.cli` that registers it.
FAMILIES = {
    "lab": "lab",
    "repo": "repo",
    "image": "repo",
    "worker": "worker",
    "backup": "session",
    "session": "session",
    "snapshots": "snapshots",
    "status": "status",
    "restore": "restore",
    "restore-points": "restore",
    "policy": "policy",
    "archive": "archive",
    "agent": "agent",
}


def _mount(app: typer.Typer, family: str) -> None:
    importlib.import_module(f"ec2backup.cli.{family}").register(app)


def _root() -> None:
    """Image-level backup, replication, archive and restore for Amazon EC2."""


def build_app(first_word: str | None = None) -> typer.Typer:
    """The CLI with the family of `first_word` mounted (all of them when unknown)."""
    app = typer.Typer(
        name="ec2backup",
        help=APP_HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    # A callback keeps the app a command group even when only one command is mounted
    # (otherwise typer runs a lone command as the program itself: `ec2backup agent` breaks).
    app.callback()(_root)
    mount = FAMILIES.get(first_word or "")
    for family in [mount] if mount else list(dict.fromkeys(FAMILIES.values())):
        _mount(app, family)
    return app


def _run(argv: list[str] | None) -> int:
    """Run one command; user errors become one line on stderr. Returns the exit code."""
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc

    args = sys.argv[1:] if argv is None else argv
    first = next((a for a in args if not a.startswith("-")), None)
    try:
        rc = build_app(first)(args=args, standalone_mode=False)
        return rc if isinstance(rc, int) else 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except typer_exc.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except typer_exc.Exit as exc:
        return int(exc.exit_code)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        return int(exc.exit_code)
    except click_exc.ClickException as exc:
        # Usage errors (bad option values, missing arguments): one line, click's exit code.
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        return int(exc.exit_code)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    code = _run(argv)
    if "temporalio.client" in sys.modules and argv is None:
        # The Temporal SDK's Rust runtime threads may call into Python while the interpreter
        # finalizes ("PyGILState_Release ... finalizing", SIGABRT). The command is done and its
        # output complete: flush and leave without finalization.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
