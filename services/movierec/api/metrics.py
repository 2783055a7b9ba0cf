"""Prometheus metrics of the API (served at /metrics). One registry per app, so tests can make many apps."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Histogram(
            "movierec_request_seconds", "HTTP request latency by endpoint, method and outcome",
            ["endpoint", "method", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.stage = Histogram(
            "movierec_stage_seconds", "Latency of model, index and store calls inside requests",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_size = Histogram(
            "movierec_model_batch_users", "Requests answered by one model pass (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.cache = Counter("movierec_cache_total", "Cache lookups by result", ["result"], registry=r)
        self.index_version = Gauge(
            "movierec_index_info", "The index version being served (value 1)", ["kind", "version"], registry=r
        )
        self.model_loaded = Gauge("movierec_model_loaded", "1 when the gSASRec model is loaded", registry=r)
        self.scoring_kernel = Gauge(
            "movierec_scoring_kernel_info", "First-pass kernel of the exact top-k per batch-size bucket (value 1)",
            ["batch", "kernel"], registry=r,
        )
        self.ratings = Counter("movierec_ratings_written_total", "Ratings written through /update_user", registry=r)
        self.circuit_open = Gauge("movierec_circuit_open", "1 while the circuit breaker of a dependency is open "
                                  "(its calls are skipped)", ["dependency"], registry=r)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage.labels(stage).observe(seconds)

    def latency_summary(self) -> dict[str, dict[str, float | int | None]]:
        """Per "endpoint method": request count, total and mean latency in ms (for /stats)."""
        rows: dict[str, dict[str, float | int | None]] = {}
        for metric in self.requests.collect():
            for sample in metric.samples:
                if not sample.value or not sample.name.endswith(("_count", "_sum")):
                    continue
                row = rows.setdefault(f"{sample.labels['endpoint']} {sample.labels['method']}",
                                      {"count": 0, "sum_ms": 0.0})
                if sample.name.endswith("_count"):
                    row["count"] = int(row["count"] or 0) + int(sample.value)
                else:
                    row["sum_ms"] = float(row["sum_ms"] or 0.0) + sample.value * 1000
        for row in rows.values():
            count, total = int(row["count"] or 0), float(row["sum_ms"] or 0.0)
            row["mean_ms"] = round(total / count, 3) if count else None
            row["sum_ms"] = round(total, 3)
        return rows
