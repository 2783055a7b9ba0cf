"""What travels between the API and the model server: TorchServe's native JSON and Open Inference Protocol v2.

The TorchServe handler (server side) and ModelServerClient (API side) both use these functions, so
what the client encodes is exactly what the handler decodes. Items are model-side `item_idx`
(1..N); 0 is padding on the wire as in the model.

Native, `POST /predictions/gsasrec`, one JSON object per request:
    {"histories": [[3, 17, 5], ...], "k": 10, "exclude": [[3, 17, 5], ...], "filters": {"genres": ["Horror"]},
     "return_vectors": false}
    -> {"items": [[...], ...], "scores": [[...], ...], "because": [[...], ...], "vectors": [[...], ...]}
Open Inference Protocol v2 (KServe), `POST /v2/models/gsasrec/infer`:
    inputs   history         INT64 [U, L]  histories, oldest first, left-padded with 0
             k               INT64 [1]
             exclude         INT64 [U, E]  optional; item_idx never returned for user u, 0-padded
             filters         BYTES [1]     optional; a JSON object: genres, year_min, year_max, min_rating
             return_vectors  BOOL  [1]     optional
    outputs  items           INT64 [U, k]  best first; 0-padded when fewer than k items pass the filters
             scores          FP32  [U, k]  0 where items is 0
             because         INT64 [U, 3]  history items the model attended to most, 0-padded
             vectors         FP32  [U, d]  only when asked
A v2 response may come back flattened (TorchServe's KServe envelope sends every output with shape
[n]); the client reshapes by the number of users it sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from movierec.errors import MovierecError
from movierec.index.base import Filters

FILTER_FIELDS = ("genres", "year_min", "year_max", "min_rating")


class WireError(MovierecError, ValueError):
    """A request or response that does not follow the format; the message names the field."""


@dataclass
class RankRequest:
    histories: list[np.ndarray]  # per user: item_idx, oldest first
    k: int
    exclude: list[np.ndarray] = field(default_factory=list)  # per user, or empty: nothing excluded
    filters: Filters = field(default_factory=Filters)
    return_vectors: bool = False
    request_id: str | None = None  # v2 "id", echoed back


@dataclass
class RankResult:
    items: list[np.ndarray]  # per user: item_idx (int64), best first, at most k
    scores: list[np.ndarray]  # per user: float32
    because: list[np.ndarray]  # per user: item_idx from the history
    vectors: np.ndarray | None = None  # [U, d] float32 when asked


# -- helpers -------------------------------------------------------------------------------------
def _rows(value: Any, name: str) -> list[np.ndarray]:
    if not isinstance(value, list) or not all(isinstance(row, list) for row in value):
        raise WireError(f"{name}: expected a list of lists of item_idx")
    try:
        return [np.asarray(row, dtype=np.int64).reshape(-1) for row in value]
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"{name}: expected integers ({exc})") from None


def _padded(rows: Sequence[np.ndarray], dtype: type, left: bool = False, width: int | None = None) -> np.ndarray:
    """Rows of unequal length as one [len(rows), width] array, 0-padded on the right (or the left)."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    out: np.ndarray = np.zeros((len(rows), width), dtype=dtype)
    for i, row in enumerate(rows):
        if len(row):
            if left:
                out[i, width - len(row):] = row
            else:
                out[i, :len(row)] = row
    return out


def _k(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise WireError(f"k: expected a positive integer, got {value!r}")
    return value


def filters_to_json(filters: Filters) -> dict[str, Any]:
    """Only the fields that restrict something."""
    out: dict[str, Any] = {}
    if filters.genres:
        out["genres"] = list(filters.genres)
    for name in ("year_min", "year_max", "min_rating"):
        if getattr(filters, name) is not None:
            out[name] = getattr(filters, name)
    return out


def filters_from_json(value: Any) -> Filters:
    if value is None:
        return Filters()
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise WireError(f"filters: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise WireError(f"filters: expected an object, got {type(value).__name__}")
    unknown = set(value) - set(FILTER_FIELDS)
    if unknown:
        raise WireError(f"filters: unknown field {sorted(unknown)[0]!r} (known: {', '.join(FILTER_FIELDS)})")
    genres = value.get("genres") or ()
    if isinstance(genres, str) or not all(isinstance(g, str) for g in genres):
        raise WireError("filters.genres: expected a list of strings")
    for name, kind in (("year_min", int), ("year_max", int), ("min_rating", (int, float))):
        v = value.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, kind)):
            raise WireError(f"filters.{name}: expected a number, got {v!r}")
    return Filters(genres=tuple(genres), year_min=value.get("year_min"), year_max=value.get("year_max"),
                   min_rating=value.get("min_rating"))


def _check_users(request: RankRequest) -> RankRequest:
    if not request.histories:
        raise WireError("histories: no users")
    if request.exclude and len(request.exclude) != len(request.histories):
        raise WireError(f"exclude: {len(request.exclude)} rows for {len(request.histories)} users")
    for u, h in enumerate(request.histories):
        if not len(h):
            raise WireError(f"histories[{u}]: empty")
    return request


# -- native JSON ---------------------------------------------------------------------------------
def native_request(request: RankRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"histories": [np.asarray(h).tolist() for h in request.histories], "k": request.k}
    if any(len(e) for e in request.exclude):
        body["exclude"] = [np.asarray(e).tolist() for e in request.exclude]
    if not request.filters.is_empty():
        body["filters"] = filters_to_json(request.filters)
    if request.return_vectors:
        body["return_vectors"] = True
    return body


def parse_native_request(body: Any) -> RankRequest:
    if not isinstance(body, dict):
        raise WireError("body: expected a JSON object with histories and k")
    unknown = set(body) - {"histories", "k", "exclude", "filters", "return_vectors"}
    if unknown:
        raise WireError(f"body: unknown field {sorted(unknown)[0]!r}")
    if "histories" not in body:
        raise WireError("histories: missing")
    return _check_users(RankRequest(
        histories=_rows(body["histories"], "histories"), k=_k(body.get("k", 10)),
        exclude=_rows(body["exclude"], "exclude") if body.get("exclude") else [],
        filters=filters_from_json(body.get("filters")), return_vectors=bool(body.get("return_vectors", False)),
    ))


def native_response(result: RankResult) -> dict[str, Any]:
    body: dict[str, Any] = {
        "items": [i.tolist() for i in result.items],
        "scores": [s.astype(np.float32).tolist() for s in result.scores],
        "because": [b.tolist() for b in result.because],
    }
    if result.vectors is not None:
        body["vectors"] = result.vectors.astype(np.float32).tolist()
    return body


def parse_native_response(body: Any, users: int) -> RankResult:
    try:
        items = [np.asarray(i, dtype=np.int64) for i in body["items"]]
        scores = [np.asarray(s, dtype=np.float32) for s in body["scores"]]
        because = [np.asarray(b, dtype=np.int64) for b in body["because"]]
        vectors = np.asarray(body["vectors"], dtype=np.float32) if "vectors" in body else None
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"response: not a ranking ({type(exc).__name__}: {exc})") from None
    if not len(items) == len(scores) == len(because) == users:
        raise WireError(f"response: {len(items)} users ranked, {users} asked")
    return RankResult(items, scores, because, vectors)


# -- Open Inference Protocol v2 ------------------------------------------------------------------
def _tensor(name: str, datatype: str, array: np.ndarray) -> dict[str, Any]:
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.reshape(-1).tolist()}


def v2_request(request: RankRequest) -> dict[str, Any]:
    inputs = [
        _tensor("history", "INT64", _padded(request.histories, np.int64, left=True)),
        _tensor("k", "INT64", np.array([request.k], dtype=np.int64)),
    ]
    if any(len(e) for e in request.exclude):
        inputs.append(_tensor("exclude", "INT64", _padded(request.exclude, np.int64)))
    if not request.filters.is_empty():
        inputs.append({"name": "filters", "shape": [1], "datatype": "BYTES",
                       "data": [json.dumps(filters_to_json(request.filters))]})
    if request.return_vectors:
        inputs.append({"name": "return_vectors", "shape": [1], "datatype": "BOOL", "data": [True]})
    body: dict[str, Any] = {"inputs": inputs}
    if request.request_id:
        body["id"] = request.request_id
    return body


def _v2_matrix(tensor: dict[str, Any], name: str) -> np.ndarray:
    """[U, L] int64 from a v2 tensor whose data is flat (the protocol) or nested (TorchServe's envelope)."""
    shape = tensor.get("shape")
    try:
        data = np.asarray(tensor.get("data"), dtype=np.int64)
        return data.reshape(shape if shape and len(shape) == 2 else (1, -1))
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"{name}: expected INT64 data of shape [U, L] ({exc})") from None


def parse_v2_inputs(inputs: Any, request_id: str | None = None) -> RankRequest:
    """The request from v2 `inputs` (each {name, shape, datatype, data})."""
    if not isinstance(inputs, list) or not all(isinstance(t, dict) and "name" in t for t in inputs):
        raise WireError("inputs: expected a list of {name, shape, datatype, data}")
    by_name = {t["name"]: t for t in inputs}
    unknown = set(by_name) - {"history", "k", "exclude", "filters", "return_vectors"}
    if unknown:
        raise WireError(f"inputs: unknown input {sorted(unknown)[0]!r}")
    if "history" not in by_name:
        raise WireError("inputs: history is missing")
    histories = [row[row != 0] for row in _v2_matrix(by_name["history"], "history")]
    k_data = np.asarray(by_name["k"]["data"]).reshape(-1) if "k" in by_name else np.array([10])
    if len(k_data) != 1:
        raise WireError("k: expected one value")
    exclude: list[np.ndarray] = []
    if "exclude" in by_name:
        exclude = [row[row != 0] for row in _v2_matrix(by_name["exclude"], "exclude")]
    filters = Filters()
    if "filters" in by_name:
        raw = by_name["filters"]["data"]
        filters = filters_from_json(raw[0] if isinstance(raw, list) else raw)  # the envelope unwraps BYTES [1]
    return_vectors = False
    if "return_vectors" in by_name:
        flag = by_name["return_vectors"]["data"]
        return_vectors = bool(flag[0] if isinstance(flag, list) else flag)
    return _check_users(RankRequest(histories, _k(int(k_data[0])), exclude, filters, return_vectors, request_id))


def parse_v2_request(body: Any) -> RankRequest:
    if not isinstance(body, dict) or "inputs" not in body:
        raise WireError("body: expected a v2 inference request with inputs")
    return parse_v2_inputs(body["inputs"], body.get("id"))


def v2_tensors(result: RankResult) -> list[tuple[str, str, np.ndarray]]:
    """(name, datatype, array) of every output, rows padded to equal length."""
    k = max((len(i) for i in result.items), default=0)
    outputs = [
        ("items", "INT64", _padded(result.items, np.int64, width=k)),
        ("scores", "FP32", _padded(result.scores, np.float32, width=k)),
        ("because", "INT64", _padded(result.because, np.int64)),
    ]
    if result.vectors is not None:
        outputs.append(("vectors", "FP32", np.asarray(result.vectors, dtype=np.float32)))
    return outputs


def v2_response(result: RankResult, model_name: str, model_version: str | None, request_id: str | None
                ) -> dict[str, Any]:
    return {"id": request_id or "", "model_name": model_name, "model_version": model_version,
            "outputs": [_tensor(name, datatype, array) for name, datatype, array in v2_tensors(result)]}


def parse_v2_response(body: Any, users: int) -> RankResult:
    try:
        outputs = {o["name"]: o for o in body["outputs"]}

        def matrix(name: str, dtype: type) -> np.ndarray:
            data: np.ndarray = np.asarray(outputs[name]["data"], dtype=dtype)
            return data.reshape(users, -1)  # a flattened output has lost its shape: U is what we sent

        items, scores, because = matrix("items", np.int64), matrix("scores", np.float32), matrix("because", np.int64)
        vectors = matrix("vectors", np.float32) if "vectors" in outputs else None
    except (KeyError, TypeError, ValueError) as exc:
        raise WireError(f"response: not a v2 ranking ({type(exc).__name__}: {exc})") from None
    if items.shape != scores.shape:
        raise WireError(f"response: items {items.shape} and scores {scores.shape} differ")
    kept = [row != 0 for row in items]
    return RankResult([i[m] for i, m in zip(items, kept)], [s[m] for s, m in zip(scores, kept)],
                      [b[b != 0] for b in because], vectors)
