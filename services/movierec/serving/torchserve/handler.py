"""The TorchServe handler for gSASRec: histories in, exact top-k item_idx, scores and explanations out.

Packed into `gsasrec.mar` by `movierec export` together with the model artifact (model.pt,
item_map.parquet, manifest.json as extra files). It ranks with `inference.encode` and
`inference.exact_top_k`, the functions the API uses in-process, so both paths rank identically.

Requests (formats in `movierec.serving.torchserve.wire`) arrive three ways:
  * native JSON on `/predictions/gsasrec`;
  * an Open Inference Protocol v2 body on `/v2/models/gsasrec/infer`: without an envelope, or with
    TS_SERVICE_ENVELOPE=body, TorchServe passes it through and the handler decodes it;
  * through TorchServe's `kservev2` envelope (TS_SERVICE_ENVELOPE=kservev2, what KServe's pytorch
    runtime sets for protocol v2): the handler gets one request's inputs as {name, shape, datatype,
    data} and returns the output arrays, which the envelope flattens. That envelope reads only the
    first request of a TorchServe batch and fails the batch, so with it use batchSize 1; with
    `body` (or none) batches work.
A TorchServe batch (`batchSize`, `maxBatchDelay`) is ranked with one model pass over every user of
every request, and one exact top-k per distinct (k, filters); a request that cannot be decoded gets
a 400 of its own without failing the others. Each response carries the header `x-movierec-batch`:
how many requests were ranked together.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from ts.torch_handler.base_handler import BaseHandler

from movierec.model.artifact import load_artifact
from movierec.serving.catalog import MovieCatalog
from movierec.serving.inference import configure_scoring, encode, exact_top_k, scoring_plan
from movierec.serving.torchserve.wire import (
    RankRequest,
    RankResult,
    WireError,
    native_response,
    parse_native_request,
    parse_v2_inputs,
    parse_v2_request,
    v2_response,
    v2_tensors,
)
from movierec.settings import Settings

log = logging.getLogger(__name__)


class GSASRecHandler(BaseHandler):
    """One instance per TorchServe worker; `initialize` once, then `handle` per batch."""

    def initialize(self, context: Any) -> None:
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        settings = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        root = Path(settings.get("model_dir") or properties["model_dir"])  # the unpacked .mar unless a folder is named
        artifact = load_artifact(root)
        self.model = artifact.model.to(self.device).eval()
        self.item_weights = self.model.output_embeddings.detach().contiguous()
        self.catalog = MovieCatalog(artifact.items)
        self.manifest = context.manifest
        model = (context.manifest or {}).get("model", {})
        self.model_name = model.get("modelName") or context.model_name
        self.model_version = model.get("modelVersion")
        serving = Settings()
        if self.device.type == "cpu":
            # one worker ranks a batch at a time next to TorchServe's Java frontend: pools that
            # spin-wait between calls (OpenMP, OpenBLAS) would take the frontend's core
            threads = serving.torch_threads
            torch.set_num_threads(threads)
            threadpool_limits(threads, user_api="blas")
            import faiss

            faiss.omp_set_num_threads(threads)
        # the first-pass kernel of the exact top-k: chosen as the API chooses (timed here at warm-up)
        configure_scoring(serving.scoring_kernel, serving.scoring_calibration_seconds)
        warm = np.arange(1, min(self.catalog.size, self.model.cfg.seq_len) + 1, dtype=np.int64)
        exact_top_k(encode(self.model, [warm]).vectors, self.item_weights, 10, None, [warm])  # lazy buffers now
        self.scoring = scoring_plan(self.item_weights)
        self.initialized = True
        log.info("gsasrec loaded from %s on %s: %d items; scoring kernel by batch size %s (%s)", root, self.device,
                 self.catalog.size, self.scoring.get("by_batch"), self.scoring.get("reason"))

    # -- the whole batch -----------------------------------------------------------------------
    def handle(self, data: list[Any], context: Any) -> list[Any]:
        self.context = context
        start = time.perf_counter()
        if is_envelope_inputs(data):
            output = self._handle_envelope(data, context)
        else:
            output = self._handle_batch(data, context)
        if getattr(context, "metrics", None) is not None:
            context.metrics.add_time("HandlerTime", round((time.perf_counter() - start) * 1000, 2), None, "ms")
        return output

    def _handle_batch(self, data: list[Any], context: Any) -> list[Any]:
        decoded: list[tuple[str, RankRequest] | WireError] = []
        for row in data:
            try:
                protocol, request = decode_body(row)
                decoded.append((protocol, self.check(request)))
            except WireError as exc:
                decoded.append(exc)
        results = iter(self.rank([d[1] for d in decoded if not isinstance(d, WireError)]))
        responses: list[Any] = []
        for idx, entry in enumerate(decoded):
            context.set_response_header(idx, "x-movierec-batch", str(len(data)))
            context.set_response_content_type(idx, "application/json")
            if isinstance(entry, WireError):
                context.set_response_status(400, "Bad Request", idx)
                responses.append(json.dumps({"code": 400, "error": str(entry)}))
                continue
            protocol, request = entry
            if protocol == "v2":
                body = v2_response(next(results), self.model_name, self.model_version,
                                   request.request_id or context.get_request_id(idx))
            else:
                body = native_response(next(results))
            responses.append(json.dumps(body, separators=(",", ":")))
        log.debug("ranked a batch of %d requests", len(data))
        return responses

    def _handle_envelope(self, inputs: list[dict[str, Any]], context: Any) -> list[np.ndarray]:
        """KServe's envelope: one request's inputs in; the outputs as arrays, named through the context."""
        try:
            (result,) = self.rank([self.check(parse_v2_inputs(inputs))])
        except WireError as exc:
            from ts.utils.util import PredictionException

            raise PredictionException(str(exc), 400) from None
        tensors = v2_tensors(result)
        context.input_names = [name for name, _, _ in tensors]  # the envelope names output i after input_names[i]
        return [array for _, _, array in tensors]

    # -- ranking -------------------------------------------------------------------------------
    def check(self, request: RankRequest) -> RankRequest:
        """WireError unless every item_idx is one the model knows."""
        for name, rows in (("histories", request.histories), ("exclude", request.exclude)):
            for u, row in enumerate(rows):
                if len(row) and (row.min() < 1 or row.max() > self.catalog.size):
                    raise WireError(f"{name}[{u}]: item_idx must be in 1..{self.catalog.size}")
        return request

    @torch.no_grad()
    def rank(self, requests: list[RankRequest]) -> list[RankResult]:
        """One model pass for every user of every request; one exact top-k per distinct (k, filters).

        Requests must have passed `check`.
        """
        if not requests:
            return []
        histories = [h for r in requests for h in r.histories]
        encoded = encode(self.model, histories)
        first = np.cumsum([0] + [len(r.histories) for r in requests])
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            f = r.filters
            groups.setdefault((r.k, tuple(sorted(f.genres)), f.year_min, f.year_max, f.min_rating), []).append(i)
        ranked: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(histories)
        for members in groups.values():
            rows = np.concatenate([np.arange(first[i], first[i + 1]) for i in members])
            exclude = [e for i in members
                       for e in (requests[i].exclude or [np.empty(0, np.int64)] * len(requests[i].histories))]
            filters = requests[members[0]].filters
            allowed = None if filters.is_empty() else self.catalog.allowed(filters)
            vectors = encoded.vectors[torch.from_numpy(rows).to(encoded.vectors.device)]
            for row, hits in zip(rows, exact_top_k(vectors, self.item_weights, requests[members[0]].k, allowed, exclude)):
                ranked[row] = hits
        results = []
        for i, r in enumerate(requests):
            span = range(first[i], first[i + 1])
            returned = encoded.vectors[first[i]:first[i + 1]].float().cpu().numpy() if r.return_vectors else None
            results.append(RankResult([ranked[u][0].astype(np.int64) for u in span],
                                      [ranked[u][1].astype(np.float32) for u in span],
                                      [encoded.because[u].astype(np.int64) for u in span], returned))
        return results


def is_envelope_inputs(data: Any) -> bool:
    """True when TorchServe's kservev2 envelope already unpacked the body into v2 inputs."""
    return bool(data) and all(isinstance(d, dict) and "datatype" in d and "name" in d for d in data)


def decode_body(row: Any) -> tuple[str, RankRequest]:
    """("native" | "v2", request) from one request: TorchServe's row ({"body": ...}) or the body itself."""
    body = row
    if isinstance(row, dict) and not ({"inputs", "histories"} & set(row)):
        body = row.get("body") if row.get("body") is not None else row.get("data")  # a row, not a body
    if isinstance(body, (bytes, bytearray)):
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WireError(f"body: not JSON ({exc})") from None
    if isinstance(body, dict) and "inputs" in body:
        return "v2", parse_v2_request(body)
    return "native", parse_native_request(body)
