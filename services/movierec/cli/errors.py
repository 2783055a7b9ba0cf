"""How every command reports bad input: one red line on stderr and a non-zero exit, no traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from movierec.errors import MovierecError

P = ParamSpec("P")
R = TypeVar("R")

err = Console(stderr=True, soft_wrap=True)


class UsageError(MovierecError, ValueError):
    """A command-line value that cannot work (e.g. --device cuda without a GPU)."""


def fail(message: str) -> typer.Exit:
    err.print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(2)


def friendly(command: Callable[P, R]) -> Callable[P, R]:
    """Turn any MovierecError into one readable line and exit status 2 (never a traceback)."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except MovierecError as exc:
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            raise fail("interrupted") from None

    return wrapper
