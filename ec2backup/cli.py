"""The `ec2backup` command line: a thin layer over the library modules.

Each command family lives next to the code it drives (`ec2backup.lab.cli`,
`ec2backup.repository.cli`, ...) and is mounted here, the way coldsnap keeps its
library apart from its binary.
"""

from __future__ import annotations

import os
import sys

import typer

from ec2backup.errors import UserError

APP_HELP = "Image-level backup, replication, archive and restore for Amazon EC2."


def _lab(app: typer.Typer) -> None:
    from ec2backup.lab.cli import lab_app

    app.add_typer(lab_app, name="lab")


def _repository(app: typer.Typer) -> None:
    from ec2backup.repository.cli import image_app, repo_app

    app.add_typer(repo_app, name="repo")
    app.add_typer(image_app, name="image")


def _sessions(app: typer.Typer) -> None:
    from ec2backup.session_cli import register

    register(app)


def _status(app: typer.Typer) -> None:
    from ec2backup.session_cli import register_status

    register_status(app)


def _restores(app: typer.Typer) -> None:
    from ec2backup.restore_cli import register

    register(app)


def _policies(app: typer.Typer) -> None:
    from ec2backup.policy_cli import register

    register(app)


def _archive(app: typer.Typer) -> None:
    from ec2backup.archive_cli import register

    register(app)


def _agent(app: typer.Typer) -> None:
    from worker_agent.cli import register

    register(app)


# Command families by first word. Only the family a command needs is imported: `image backup`
# must not pay for importing temporalio (start-up time is most of a small incremental).
FAMILIES = {
    "lab": _lab,
    "repo": _repository,
    "image": _repository,
    "worker": _sessions,
    "backup": _sessions,
    "session": _sessions,
    "snapshots": _sessions,
    "status": _status,
    "restore": _restores,
    "restore-points": _restores,
    "policy": _policies,
    "archive": _archive,
    "agent": _agent,
}


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
        family(app)
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
