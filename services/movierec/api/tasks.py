"""Background tasks over HTTP: start an index rebuild, follow any task. Both need X-API-Key when API_KEY is set."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field

from movierec.api.routes import Svc, require_key
from movierec.model.artifact import ArtifactError
from movierec.worker.jobs import TaskInputError, index_params, model_sha

router = APIRouter(dependencies=[Depends(require_key)], tags=["tasks"])


class ReindexRequest(BaseModel):
    kind: Literal["flat", "ivf", "hnsw"] = Field("flat", description="flat (exact), ivf or hnsw (approximate).")
    params: dict[str, int | float | str] | None = Field(
        None, description="FAISS build settings, e.g. {\"hnsw_m\": 32}; unknown keys are refused.")
    min_recall: float = Field(0.0, ge=0, le=1, description="Publish only if recall@10 against exact search "
                              "reaches this (the task fails otherwise and the current version stays).")


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


@router.post("/admin/reindex", response_model=TaskAccepted, status_code=202)
def reindex(body: ReindexRequest, svc: Svc) -> dict[str, Any]:
    """Build a new FAISS index version of the served model and publish it (task `build_index`).

    API replicas switch to it on their next index check, between two requests.
    """
    if svc.work is None:
        raise HTTPException(503, "background work is not running")
    try:
        index_params(body.kind, body.params)
        model_sha(svc.settings.model_path)
    except TaskInputError as exc:
        raise HTTPException(422, str(exc)) from None
    except ArtifactError as exc:
        raise HTTPException(409, f"model: {exc}") from None
    task_id = svc.work.submit("movierec.build_index", {"kind": body.kind, "params": body.params,
                                                        "min_recall": body.min_recall})
    return {"task_id": task_id, "state": "PENDING", "status_url": f"/tasks/{task_id}", "mode": svc.work.mode}


@router.get("/tasks/{task_id}", response_model=TaskStatus)
def task_status(task_id: Annotated[str, Path(max_length=64)], svc: Svc) -> dict[str, Any]:
    """A task's state, its progress while it runs, then its result or the reason it failed."""
    try:
        uuid.UUID(task_id)
    except ValueError:
        raise HTTPException(422, f"task_id: {task_id!r} is not a task id (a UUID)") from None
    status = svc.work.status(task_id) if svc.work is not None else None
    if status is None:
        raise HTTPException(404, f"task_id: {task_id} is unknown (or its result has expired)")
    return status
