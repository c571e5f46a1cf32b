"""The `ec2backup` command line: a thin layer over the library modules.

Each command family lives next to the code it drives (`ec2backup.lab.cli`,
`ec2backup.repository.cli`, ...) and is mounted here, the way coldsnap keeps its
library apart from its binary.
"""

from __future__ import annotations

import sys

import typer

from ec2backup.errors import UserError

app = typer.Typer(
    name="ec2backup",
    help="Image-level backup, replication, archive and restore for Amazon EC2.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _mount() -> None:
    from ec2backup.lab.cli import lab_app

    app.add_typer(lab_app, name="lab")
    try:
        from ec2backup.repository.cli import image_app, repo_app
    except ImportError:  # pragma: no cover - during bootstrap of the repository package
        pass
    else:
        app.add_typer(repo_app, name="repo")
        app.add_typer(image_app, name="image")
    from ec2backup.session_cli import register as register_sessions
    from worker_agent.cli import register as register_agent

    register_sessions(app)

    register_agent(app)


_mount()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: user errors become one line on stderr and an exit code."""
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc

    try:
        rc = app(args=argv, standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer_exc.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except typer_exc.Exit as exc:
        sys.exit(exc.exit_code)
    except click_exc.NoArgsIsHelpError as exc:
        print(exc.format_message(), file=sys.stderr)
        sys.exit(exc.exit_code)
    except click_exc.ClickException as exc:
        # Usage errors (bad option values, missing arguments): one line, click's exit code.
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
