"""The one error type the data module raises for bad input."""

from __future__ import annotations

from pathlib import Path

from movierec.errors import MovierecError


class DataError(MovierecError, ValueError):
    """Bad or missing input data.

    The message is a single readable line that starts with the file (and line number when the
    problem is in one row), e.g. ``ratings.csv:17: rating 7.0 is outside 0.5..5.0``.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(" ".join(f"{where}{message}".split("\n")))
