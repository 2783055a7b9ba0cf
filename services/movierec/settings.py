"""Every setting movierec reads from the environment, in one place (pydantic-settings).

Names are the ones operators already use (MONGO_URI, REDIS_HOST, ...). Unset servers mean the
embedded default: SQLite instead of MongoDB, an in-process cache instead of Redis, Qdrant Edge
instead of a Qdrant server, the model in-process instead of TorchServe.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)

    movierec_home: Path = Field(Path("artifacts"), description="Root of models, indexes and the embedded database.")
    model_dir: Path | None = Field(None, description="Model artifact folder (default: MOVIEREC_HOME/model).")
    api_key: str | None = Field(None, description="When set, write endpoints require header X-API-Key.")

    mongo_uri: str | None = None
    redis_host: str | None = None
    redis_port: int = 6379
    redis_db: int = 0
    redis_password: str | None = Field(None, description="Password of the Redis server (AUTH); the Helm chart "
                                       "sets it from its Secret.")
    qdrant_host: str | None = None
    qdrant_port: int = 6333
    torchserve_host: str | None = Field(None, description="TorchServe/KServe host: method torchserve ranks there.")
    torchserve_port: int = 8080
    torchserve_protocol: Literal["v2", "native"] = Field(
        "v2", description="v2: POST /v2/models/M/infer (KServe Open Inference Protocol); native: POST /predictions/M.")
    torchserve_model: str = "gsasrec"
    torchserve_timeout_ms: int = Field(1000, gt=0, description="Per request; slower answers are served in-process.")
    torchserve_failures_to_open: int = Field(3, ge=1, description="Consecutive failures that open the circuit.")
    torchserve_cooldown_seconds: float = Field(5.0, ge=0, description="Open circuit: wait this long, then probe.")
    # -- limits under faults and hostile input (docs/reliability.md) --
    redis_timeout_ms: int = Field(50, gt=0, description="Redis connect and reply timeout; no retries: a miss.")
    redis_failures_to_open: int = Field(3, ge=1, description="Consecutive Redis failures that open its circuit.")
    redis_cooldown_seconds: float = Field(2.0, ge=0, description="Open Redis circuit: serve uncached this long, "
                                          "then probe.")
    cache_max_bytes: int = Field(256 * 2**20, ge=0, description="Bound of the in-process cache (keys + values).")
    max_body_bytes: int = Field(65536, ge=1024, description="Larger request bodies are refused with 413.")
    batch_max_users: int = Field(1000, ge=1, le=1000, description="Most users one /recommend_batch may ask for.")
    batch_slice_users: int = Field(16, ge=1, description="/recommend_batch runs in slices of this many users; "
                                   "single requests are served between slices (bench/faults.py).")
    batch_requires_key: bool = Field(False, description="Require X-API-Key for /recommend_batch too.")
    celery_broker_url: str | None = Field(None, description="Celery broker (redis://host:6379/1): /update_user "
                                          "and /admin/reindex enqueue there; unset: the same tasks run in a thread.")
    celery_result_backend: str | None = Field(None, description="Where task states live (default: the broker).")
    celery_result_expires_seconds: int = Field(86400, ge=60, description="Task results are deleted after this.")
    celery_visibility_timeout_seconds: int = Field(
        3600, ge=1, description="A task taken by a worker that died unacknowledged goes back to the queue after "
        "this; must exceed the longest task (load_store's hard limit).")
    celery_restore_interval_seconds: float = Field(10.0, gt=0, description="How often a worker looks for such tasks.")
    celery_max_retries: int = Field(5, ge=0, description="Retries of a task failing on a server that is down.")
    celery_retry_backoff_max_seconds: int = Field(120, ge=1, description="Longest wait between two retries.")
    worker_refresh_batch: int = Field(256, ge=1, description="Users per batch of refresh_user_vectors.")
    worker_aggregates_every_seconds: float = Field(300.0, ge=0, description="Beat: popular movies and /stats "
                                                   "counts refreshed this often (0: never).")
    worker_cache_sweep_every_seconds: float = Field(3600.0, ge=0, description="Beat: stale cache keys dropped "
                                                    "this often (0: never).")

    cache_ttl_seconds: int = Field(300, description="TTL of cached histories, user vectors and responses.")
    min_history: int = Field(3, description="Ratings a user needs before recommendations come from the sequence.")
    torch_threads: int = Field(1, ge=1, description="Intra-op threads of the API's model thread and of each "
                               "TorchServe worker (/recommend_batch slices too).")
    scoring_kernel: Literal["auto", "fp32", "faiss-sq8-direct", "int8-torch", "faiss-sq8", "fp16-torch"] = Field(
        "auto", description="First pass of the exact top-k (serving/kernels.py): auto times each kernel per batch "
        "size on this CPU at load and uses the fastest; a name forces that kernel (the ranking stays exact).")
    scoring_calibration_seconds: float = Field(4.0, gt=0, description="Time the auto choice may take at load.")
    index_poll_seconds: float = Field(5.0, description="How often the API looks for a new index version.")
    # -- the IndexBuild operator (operators/movierec_operator, docs/operator.md) --
    operator_image: str = Field("movierec:latest", description="Image of the index build Jobs (an IndexBuild's "
                                "spec.image overrides it).")
    operator_model_claim: str = Field("movierec-model", description="PersistentVolumeClaim holding model "
                                      "artifacts, mounted read-only at MOVIEREC_HOME/model in build Jobs.")
    operator_index_claim: str = Field("movierec-index", description="PersistentVolumeClaim the API serves "
                                      "indexes from, mounted at MOVIEREC_HOME/index in build Jobs.")
    operator_namespace: str | None = Field(None, description="Namespace the operator watches (unset: all).")
    operator_pending_seconds: float = Field(10.0, gt=0, description="An IndexBuild waiting for another build of "
                                            "its target looks again after this long.")
    operator_health_port: int = Field(8080, description="Port of the operator's liveness endpoint (/healthz).")
    kubeconfig: Path | None = Field(None, description="The operator's cluster outside a pod (as kubectl's "
                                    "KUBECONFIG); in a pod it uses its service account.")
    movierec_web_dir: Path | None = Field(None, description="The built web page (Next.js static export) served "
                                          "at /; default: services/web/out of this source tree.")

    @cached_property
    def model_path(self) -> Path:
        return self.model_dir or self.movierec_home / "model"

    @property
    def torchserve_url(self) -> str | None:
        """Base URL of the model server: TORCHSERVE_HOST as given when it is a URL, else http://host:port."""
        if not self.torchserve_host:
            return None
        if "://" in self.torchserve_host:
            return self.torchserve_host.rstrip("/")
        return f"http://{self.torchserve_host}:{self.torchserve_port}"

    @property
    def web_path(self) -> Path:
        """The folder whose index.html the API serves at /: MOVIEREC_WEB_DIR, else the source tree's build."""
        return self.movierec_web_dir or Path(__file__).resolve().parents[1] / "web" / "out"

    @property
    def sqlite_path(self) -> Path:
        return self.movierec_home / "store.sqlite"

    @property
    def faiss_dir(self) -> Path:
        return self.movierec_home / "index" / "faiss"

