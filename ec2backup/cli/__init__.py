"""The `ec2backup` command line: one module per command family, each thin (parse, call the
library, print) and each exposing `register(app)`.

Only the family a command needs is imported: `image backup` must not pay for importing
temporalio (start-up time is most of a small incremental).
"""

from __future__ import annotations

import enum
import importlib
import os
import sys
from pathlib import Path

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
    "iam": "iam",
    "setup": "deploy",
    "doctor": "deploy",
    "worker-image": "workerimage",
    "codec-server": "codec",
}


def _mount(app: typer.Typer, family: str) -> None:
    importlib.import_module(f"ec2backup.cli.{family}").register(app)


class Output(enum.StrEnum):
    table = "table"
    json = "json"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"ec2backup {version('ec2backup')}")
        except PackageNotFoundError:  # run from a checkout that is not installed
            print("ec2backup (not installed)")
        raise typer.Exit(0)


def _root(
    config_file: Path = typer.Option(
        None,
        "--config",
        help="Installation configuration file (default $EC2BACKUP_CONFIG, then "
        "~/.config/ec2backup/config.toml)",
        dir_okay=False,
    ),
    profile: str = typer.Option(None, "--profile", help="AWS profile (as $AWS_PROFILE)"),
    region: str = typer.Option(
        None, "--region", help="AWS Region for every command (as $AWS_REGION)"
    ),
    output: Output = typer.Option(None, "--output", help="How commands print: table or json"),
    version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version"
    ),
) -> None:
    """Image-level backup, replication, archive and restore for Amazon EC2."""
    # Global options become the environment every part reads (boto3 reads AWS_PROFILE;
    # ec2backup.config, aws.default_region and cli.output read the others), so a command's
    # own options, when given, still win.
    if config_file is not None:
        os.environ["EC2BACKUP_CONFIG"] = str(config_file)
    if profile:
        os.environ["AWS_PROFILE"] = profile
    if region:
        os.environ["AWS_REGION"] = region
    if output is not None:
        from ec2backup.cli.output import OUTPUT_ENV

        os.environ[OUTPUT_ENV] = output.value


def build_app(first_word: str | None = None) -> typer.Typer:
    """The CLI with the family of `first_word` mounted (all of them when unknown)."""
    app = typer.Typer(
        name="ec2backup",
        help=APP_HELP,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        # `ec2backup --install-completion` / `--show-completion` (bash, zsh, fish, PowerShell)
        add_completion=True,
    )
    # A callback keeps the app a command group even when only one command is mounted
    # (otherwise typer runs a lone command as the program itself: `ec2backup agent` breaks).
    app.callback()(_root)
    mount = FAMILIES.get(first_word or "")
    for family in [mount] if mount else list(dict.fromkeys(FAMILIES.values())):
        _mount(app, family)
    return app


# Global options that take a value: their value is not the command's first word.
GLOBAL_VALUE_OPTIONS = ("--config", "--profile", "--region", "--output")


def _first_word(args: list[str]) -> str | None:
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in GLOBAL_VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def _run(argv: list[str] | None) -> int:
    """Run one command; user errors become one line on stderr. Returns the exit code."""
    from typer import exceptions as typer_exc
    from typer._click import exceptions as click_exc

    args = sys.argv[1:] if argv is None else argv
    first = _first_word(args)
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
    if "ec2backup.observability" in sys.modules:
        # Spans still buffered go out now: the exit below skips atexit handlers.
        sys.modules["ec2backup.observability"].shutdown()
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
