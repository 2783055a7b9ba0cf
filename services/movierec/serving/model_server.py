"""What the recommender needs from a remote model server, and how it says it cannot answer.

The recommender ranks method `torchserve` through a `ModelServer` when one is configured
(`serving/torchserve/client.py` talks to TorchServe or KServe) and serves in-process whenever it
raises `ModelServerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from movierec.index.base import Filters


class ModelServerUnavailable(RuntimeError):
    """The model server cannot answer now; the caller serves the request in-process."""


class ModelServer(Protocol):
    """A remote gSASRec (TorchServe/KServe): exact top-k and explanations for histories."""

    def rank(self, histories: Sequence[np.ndarray], k: int, filters: Filters, exclude: Sequence[np.ndarray]
             ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]: ...

    def health(self) -> tuple[bool, str]: ...
