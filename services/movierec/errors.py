"""The one base of every error a user can cause or fix: bad input, missing files, servers down.

Each module raises its own subclass (`DataError`, `StoreError`, `ArtifactError`, `IndexFileError`,
`ModelServerError`, `UsageError`, ...) with a message that is one readable line naming the file,
field or server at fault. The CLI turns any `MovierecError` into that line on stderr and exit
status 2 (`cli/errors.py`); the API maps the ones a request can cause to a 4xx or 503.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MovierecError(Exception):
    """A user-facing error; `str(error)` is one line (what went wrong, where, and what to do when known)."""
