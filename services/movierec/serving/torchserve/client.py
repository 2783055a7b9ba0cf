"""The API's client for the model server (TorchServe, or KServe running TorchServe).

`ModelServerClient.rank` sends histories to the TorchServe handler (`movierec.serving.torchserve.handler`)
over the Open Inference Protocol v2 (`POST /v2/models/gsasrec/infer`) or TorchServe's native API
(`POST /predictions/gsasrec`) and returns, per user, the exact top-k (item_idx, scores) and the
explaining item_idx: the same answer as the in-process path, computed by the same functions.

It raises ModelServerUnavailable when the server is down, slow, answers an error, or the circuit
breaker is open; the recommender then serves that request in-process. One pooled keep-alive
connection set, a timeout per request, one retry when a connection cannot be made, and a circuit
breaker (`movierec.breaker`): while it is open no request goes to the server and the API answers
in-process at once; after the cooldown one request probes it. `health()` reports the state for `/health`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Literal

import httpx
import numpy as np

from movierec.breaker import CircuitBreaker
from movierec.index.base import Filters
from movierec.serving.model_server import ModelServerUnavailable
from movierec.serving.torchserve.wire import (
    RankRequest,
    WireError,
    native_request,
    parse_native_response,
    parse_v2_response,
    v2_request,
)

log = logging.getLogger(__name__)

WireProtocol = Literal["v2", "native"]


class ModelServerClient:
    """`rank()` and `health()` against one TorchServe model; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        protocol: WireProtocol = "v2",
        model: str = "gsasrec",
        timeout: float = 1.0,
        retries: int = 1,
        breaker: CircuitBreaker | None = None,
        max_connections: int = 16,
    ) -> None:
        if protocol not in ("v2", "native"):
            raise ValueError(f"protocol: expected v2 or native, got {protocol!r}")
        self.base_url, self.protocol, self.model = base_url.rstrip("/"), protocol, model
        self.path = f"/v2/models/{model}/infer" if protocol == "v2" else f"/predictions/{model}"
        self.breaker = breaker or CircuitBreaker(name=f"model server {self.base_url}")
        self.http = httpx.Client(
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout),
            transport=httpx.HTTPTransport(retries=retries),  # retries connection failures only, never a sent request
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def rank(self, histories: Sequence[np.ndarray], k: int, filters: Filters, exclude: Sequence[np.ndarray]
             ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[np.ndarray]]:
        """Per user (item_idx, scores) best first, and the explaining item_idx; ModelServerUnavailable if not now."""
        if not self.breaker.allow():
            raise ModelServerUnavailable(f"circuit open: {self.breaker.last_error}")
        request = RankRequest([np.asarray(h, dtype=np.int64) for h in histories], k,
                              [np.asarray(e, dtype=np.int64) for e in exclude], filters)
        try:
            body = v2_request(request) if self.protocol == "v2" else native_request(request)
            response = self.http.post(self.path, content=json.dumps(body, separators=(",", ":")),
                                      headers={"content-type": "application/json"})
            if response.status_code != 200:
                raise WireError(f"HTTP {response.status_code}: {response.text[:200]}")
            parse = parse_v2_response if self.protocol == "v2" else parse_native_response
            result = parse(response.json(), len(request.histories))
        except (httpx.HTTPError, ValueError) as exc:  # ValueError: WireError, bad JSON
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.breaker.failure(error)
            raise ModelServerUnavailable(error) from exc
        self.breaker.success()
        return list(zip(result.items, result.scores)), result.because

    def health(self) -> tuple[bool, str]:
        """(ok, detail): TorchServe's /ping when the circuit is closed or its cooldown has passed (the ping is
        then the probe: a healthy answer closes the circuit), else the breaker's state."""
        where = f"{self.base_url} ({self.protocol})"
        if self.breaker.state != "closed" and not self.breaker.allow():
            return False, f"{where}: circuit {self.breaker.state}: {self.breaker.last_error}"
        try:
            response = self.http.get("/ping")
            status = response.json().get("status", "") if response.status_code == 200 else f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as exc:
            self.breaker.failure(f"ping: {type(exc).__name__}: {exc}")
            return False, f"{where}: unreachable ({type(exc).__name__}: {exc}); serving in-process"
        if status == "Healthy":
            self.breaker.success()
        elif self.breaker.state == "half-open":
            self.breaker.failure(f"ping: {status}")
        return status == "Healthy", f"{where}: {status}"

    def close(self) -> None:
        self.http.close()
