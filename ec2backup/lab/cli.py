from __future__ import annotations
import typer
lab_app = typer.Typer(help="The local AWS lab with real block data.", no_args_is_help=True)
