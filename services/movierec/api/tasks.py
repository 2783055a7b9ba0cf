"""Background tasks over HTTP: start an index rebuild, follow any task. Both need X-API-Key when API_KEY is set."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, BeforeValidator, Field

from movierec.api.routes import INVALID, UNAUTHORIZED, Svc, error, require_key
from movierec.api.schemas import Strict, json_integer
from movierec.model.artifact import ArtifactError
from movierec.worker.jobs import TaskInputError, index_params, model_sha

router = APIRouter(dependencies=[Depends(require_key)], tags=["tasks"])


# JSON integers with bounds (the bounds before the validator, so the OpenAPI document shows them)
Lists = Annotated[int, Field(ge=1, le=1_000_000), BeforeValidator(json_integer)]
Degree = Annotated[int, Field(ge=2, le=256), BeforeValidator(json_integer)]
Breadth = Annotated[int, Field(ge=1, le=4096), BeforeValidator(json_integer)]


class IndexParams(Strict):
    """FAISS build and search settings (index.faiss_index.FaissParams); ivf_* and hnsw_* apply to that kind only."""

    ivf_lists: Lists | None = Field(None, description="IVF lists (default: about sqrt(items)).")
    ivf_probe: Lists | None = Field(None, description="IVF lists scanned per query.")
    hnsw_m: Degree | None = Field(None, description="HNSW graph degree.")
    hnsw_ef_construction: Breadth | None = None
    hnsw_ef_search: Breadth | None = None
    hnsw_exact_below: float | None = Field(None, ge=0, le=1, strict=True,
                                           description="Filters keeping a smaller share of items search exactly.")
    filter_mode: Literal["selector", "postfilter"] | None = None


class ReindexRequest(Strict):
    kind: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat (exact), ivf or hnsw (approximate).")
    params: IndexParams | None = Field(None, description="FAISS build settings, e.g. {\"hnsw_m\": 32}.")
    min_recall: float = Field(0.0, ge=0, le=1, strict=True, description="Publish only if recall@10 against exact "
                              "search reaches this (the task fails otherwise and the current version stays).")


class TaskAccepted(BaseModel):
    task_id: str
    state: str
    status_url: str
    mode: str = Field(description="celery (a worker runs it) or in-process (a thread of this API).")


class TaskStatus(BaseModel):
    task_id: str
    name: str | None
    state: str = Field(description="PENDING, STARTED, PROGRESS, RETRY, SUCCESS or FAILURE.")
    progress: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = Field(None, description="Why it failed (FAILURE) or why it will retry (RETRY).")
    retries: int = 0


TASK_ID = r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"  # a UUID


@router.post("/admin/reindex", response_model=TaskAccepted, status_code=202,
             responses={**INVALID, **UNAUTHORIZED, 409: error("The served model's artifact cannot be read.")})
def reindex(body: ReindexRequest, svc: Svc) -> dict[str, Any]:
    """Build a new FAISS index version of the served model and publish it (task `build_index`).

    API replicas switch to it on their next index check, between two requests.
    """
    if svc.work is None:
        raise HTTPException(503, "background work is not running")
    params = body.params.model_dump(exclude_none=True) if body.params else None
    try:
        index_params(body.kind, params)
        model_sha(svc.settings.model_path)
    except TaskInputError as exc:
        raise HTTPException(422, str(exc)) from None
    except ArtifactError as exc:
        raise HTTPException(409, f"model: {exc}") from None
    task_id = svc.work.submit("movierec.build_index", {"kind": body.kind, "params": params,
                                                        "min_recall": body.min_recall})
    return {"task_id": task_id, "state": "PENDING", "status_url": f"/tasks/{task_id}", "mode": svc.work.mode}


@router.get("/tasks/{task_id}", response_model=TaskStatus,
            responses={**INVALID, **UNAUTHORIZED, 404: error("No such task, or its result has expired.")})
def task_status(task_id: Annotated[str, Path(pattern=TASK_ID, description="The id /admin/reindex returned.")],
                svc: Svc) -> dict[str, Any]:
    """A task's state, its progress while it runs, then its result or the reason it failed."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise HTTPException(422, f"task_id: {task_id!r} is not a task id (a UUID)") from None
    status = svc.work.status(task_id) if svc.work is not None else None
    if status is None:
        raise HTTPException(404, f"task_id: {task_id} is unknown (or its result has expired)")
    return status
