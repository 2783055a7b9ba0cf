"""`movierec db ...`: fill and inspect the store the API reads (SQLite by default, or MongoDB)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from movierec.cli.errors import UsageError, friendly

db_app = typer.Typer(
    help="The store the API serves from: movies, ratings and users. SQLite file by default; MongoDB when "
    "--mongo-uri (or MONGO_URI) is given.",
    no_args_is_help=True,
)
_out = Console(soft_wrap=True)

MongoUri = Annotated[
    str | None,
    typer.Option(
        "--mongo-uri",
        help="MongoDB connection string, e.g. mongodb://host:27017/movierec (database defaults to movierec). "
        "When set, --sqlite is ignored. Default: the MONGO_URI variable.",
        show_default=False,
    ),
]
SqlitePath = Annotated[
    Path | None,
    typer.Option("--sqlite", help="SQLite store file, used when no MongoDB URI is given. "
                 "Default: MOVIEREC_HOME/store.sqlite.", show_default=False),
]


def _store_location(mongo_uri: str | None, sqlite: Path | None) -> tuple[str | None, Path]:
    """The options, else the settings (MONGO_URI, MOVIEREC_HOME): the same store the API opens."""
    from movierec.settings import Settings

    settings = Settings()
    return mongo_uri or settings.mongo_uri, sqlite or settings.sqlite_path


@db_app.command("load")
@friendly
def load_command(
    data: Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset folder (from `movierec data prepare`).")],
    mongo_uri: MongoUri = None,
    sqlite: SqlitePath = None,
    replace: Annotated[
        bool, typer.Option(help="Reload a store that already holds data (its ratings are lost).")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Load a prepared dataset into the store: its movies, every user's ratings in order, and user stats.

    Ratings stream in chunks, so ML-32M loads with bounded memory. Replacing a filled store needs --replace.
    """
    from movierec.data.prepared import load_prepared
    from movierec.store import StoreUnavailable, open_store

    mongo_uri, sqlite = _store_location(mongo_uri, sqlite)
    prepared = load_prepared(data)
    start = time.perf_counter()
    with open_store(mongo_uri, sqlite) as store:
        if not store.ping():
            raise StoreUnavailable(f"{store.location}: the database does not answer")
        existing = store.counts()
        if (existing["ratings"] or existing["movies"]) and not replace:
            raise UsageError(
                f"{store.location} already holds {existing['movies']:,} movies and {existing['ratings']:,} "
                "ratings; pass --replace to reload it"
            )
        counts = store.load_prepared(prepared, progress=progress)
        _out.print(
            f"loaded {data} into {store.location}: {counts['movies']:,} movies, {counts['ratings']:,} ratings, "
            f"{counts['users']:,} users ({time.perf_counter() - start:.1f} s)"
        )


@db_app.command("status")
@friendly
def status_command(mongo_uri: MongoUri = None, sqlite: SqlitePath = None) -> None:
    """Say whether the store answers and how many movies, ratings and users it holds."""
    from movierec.store import StoreUnavailable, open_store

    mongo_uri, sqlite = _store_location(mongo_uri, sqlite)
    if not mongo_uri and not sqlite.is_file():
        raise UsageError(f"{sqlite}: no such store (fill it with `movierec db load`)")
    with open_store(mongo_uri, sqlite) as store:
        if not store.ping():
            raise StoreUnavailable(f"{store.location}: the database does not answer")
        counts = store.counts()
        _out.print(
            f"{store.location}: {counts['movies']:,} movies, {counts['ratings']:,} ratings, {counts['users']:,} users"
        )
