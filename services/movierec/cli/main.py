"""The `movierec` command line: one sub-command per job, each with --help."""

from __future__ import annotations

import logging

import typer
from rich.logging import RichHandler

from movierec.cli import demo, model, model_server, serve, worker
from movierec.cli.data import data_app
from movierec.cli.db import db_app
from movierec.cli.index import index_app

app = typer.Typer(
    name="movierec",
    help="movierec: gSASRec sequential movie recommendations on MovieLens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
    )
    if not verbose:  # FAISS logs each SIMD build it tries to load: noise unless debugging
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)


app.add_typer(data_app, name="data")
app.add_typer(db_app, name="db")
app.add_typer(index_app, name="index")
app.command("train")(model.train)
app.command("evaluate")(model.evaluate)
app.command("recommend")(model.recommend)
app.command("demo")(demo.demo)
app.command("serve")(serve.serve)
app.command("export")(model_server.export)
app.command("serve-model")(model_server.serve_model)
app.command("worker")(worker.worker)
app.command("beat")(worker.beat)
app.command("flower")(worker.flower)


@app.command("operator", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def operator(ctx: typer.Context) -> None:
    """Run the IndexBuild operator (the same as `movierec-operator`; options: --namespace, --health-port, -v)."""
    from movierec_operator.main import main as run_operator

    run_operator(list(ctx.args))
