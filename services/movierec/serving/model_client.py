"""The API's client for the model server (TorchServe / KServe): see issue #4.

Placeholder contract, filled in by the model-serving work: `ModelServerClient.rank` returns, per
user, the exact top-k (item_idx, scores) and the explaining item_idx, computed by the TorchServe
handler with the same inference code as the in-process path; it raises ModelServerUnavailable
when the server is down, slow, or the circuit breaker is open.
"""

from __future__ import annotations


class ModelServerUnavailable(RuntimeError):
    """The model server cannot answer now; the caller serves the request in-process."""
