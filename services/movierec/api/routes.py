"""The HTTP endpoints: thin; the work is in serving.Recommender and the store."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from movierec.api import schemas
from movierec.api.services import Services
from movierec.store import UserStats

router = APIRouter()


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]


def require_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    expected = request.app.state.services.settings.api_key
    if expected and x_api_key != expected:
        raise HTTPException(401, "X-API-Key: missing or wrong API key")


def json_bytes(content: dict) -> Response:
    """The response built by the recommender is already the schema's shape: serialize it as is."""
    return Response(orjson.dumps(content), media_type="application/json")


@router.post("/recommend", response_model=schemas.RecommendResponse, tags=["recommend"])
async def recommend(body: schemas.RecommendRequest, svc: Svc, request: Request) -> Response:
    """Top-k movies for a user from their history (popular movies while the history is short)."""
    request.state.method = body.method
    if svc.batcher is None:  # no model loaded
        return json_bytes(await run_in_threadpool(svc.popular_for_user, body.user_id, body.k, body.method,
                                                  body.filters(), body.exclude_rated))
    return json_bytes(await svc.batcher.recommend(body.user_id, body.k, body.method, body.filters(),
                                                  body.exclude_rated))


@router.post("/recommend_batch", response_model=schemas.RecommendBatchResponse, tags=["recommend"])
async def recommend_batch(body: schemas.RecommendBatchRequest, svc: Svc, request: Request) -> Response:
    """Recommendations for up to 1,000 users in one call (one model pass for all of them)."""
    request.state.method = body.method
    if svc.batcher is None or svc.recommender is None:  # no model loaded
        return json_bytes({"results": await run_in_threadpool(lambda: [
            svc.popular_for_user(u, body.k, body.method, body.filters(), body.exclude_rated) for u in body.user_ids])})
    recs = await svc.batcher.run(svc.recommender.recommend_many, body.user_ids, body.k, body.method,
                                 body.filters(), body.exclude_rated, all_cores=len(body.user_ids) >= 32)
    return json_bytes({"results": [r.to_dict() for r in recs]})


@router.post("/update_user", response_model=schemas.UpdateUserResponse, tags=["users"],
             dependencies=[Depends(require_key)])
def update_user(body: schemas.UpdateUserRequest, svc: Svc) -> dict:
    """Store a rating (acknowledged write), append it to the history and drop the user's cache."""
    added = svc.store.add_rating(body.user_id, body.movie_id, body.rating, body.timestamp)
    if svc.recommender is not None:
        svc.recommender.invalidate(body.user_id)
    svc.metrics.ratings.inc()
    return {"user_id": added["user_id"], "movie_id": added["movie_id"], "rating": added["rating"],
            "n_ratings": added["n_ratings"]}


@router.post("/search_movies", response_model=schemas.SearchResponse, tags=["movies"])
def search_movies(body: schemas.SearchRequest, svc: Svc) -> dict:
    """Movies whose title matches the query (case-insensitive; best matches first)."""
    return {"query": body.query, "results": svc.store.search_movies(body.query, body.limit)}


@router.get("/user_stats/{user_id}", response_model=schemas.UserStatsResponse, tags=["users"])
def user_stats(user_id: int, svc: Svc) -> UserStats:
    """A user's rating count, mean rating, first/last activity and top genres."""
    if user_id < 0:
        raise HTTPException(422, "user_id: must be non-negative")
    stats = svc.store.user_stats(user_id)
    if stats is None:
        raise HTTPException(404, f"user_id: {user_id} has no ratings")
    return stats


@router.get("/popular_movies", response_model=schemas.PopularResponse, tags=["movies"])
def popular_movies(
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    genres: Annotated[list[str] | None, Query()] = None,
    year_min: Annotated[int | None, Query(ge=1800, le=2100)] = None,
    year_max: Annotated[int | None, Query(ge=1800, le=2100)] = None,
    min_rating: Annotated[float | None, Query(ge=0, le=5)] = None,
) -> dict:
    """The most rated movies, optionally filtered."""
    return {"results": svc.store.popular_movies(limit, genres, year_min, year_max, min_rating)}


@router.get("/health", tags=["ops"])
def health(svc: Svc) -> JSONResponse:
    """Status of every dependency: 200 when the API can serve, 503 otherwise."""
    serving, healthy, components = svc.health()
    status = "ok" if healthy else "degraded" if serving else "down"
    return JSONResponse({"status": status, "components": components}, status_code=200 if serving else 503)


@router.get("/stats", tags=["ops"])
def stats(svc: Svc) -> dict:
    """Counts, model and index versions, cache hit ratio and a latency summary."""
    return svc.stats()


@router.get("/metrics", tags=["ops"])
def metrics(svc: Svc) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
