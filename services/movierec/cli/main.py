"""The `movierec` command line: one sub-command per job, each with --help."""

from __future__ import annotations

import typer

from movierec.cli.data import data_app

app = typer.Typer(
    name="movierec",
    help="movierec: gSASRec sequential movie recommendations on MovieLens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(data_app, name="data")
