"""What the store raises for bad input or an unreachable database.

Every error is a `MovierecError`, which the CLI prints as one line; the API maps `UnknownMovie`
to 404, `InvalidValue` to 422 and `StoreUnavailable` to 503.
"""

from __future__ import annotations

from movierec.errors import MovierecError


class StoreError(MovierecError):
    """A store operation that cannot work; the message is one readable line."""


class UnknownMovie(StoreError, LookupError):
    """A rating names a movie_id the store does not hold."""

    def __init__(self, movie_id: int) -> None:
        self.movie_id = movie_id
        super().__init__(f"movie_id {movie_id}: no such movie in the store")


class InvalidValue(StoreError, ValueError):
    """A field of a write is out of range or of the wrong type; `field` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreUnavailable(StoreError):
    """The database cannot be opened or reached."""
