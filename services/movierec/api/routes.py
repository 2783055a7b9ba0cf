"""The HTTP endpoints: thin; the work is in serving.Recommender and the store."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from movierec.api import schemas
from movierec.api.services import Services
from movierec.store import UserStats

router = APIRouter()
log = logging.getLogger("movierec.api")


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]


def key_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison (hmac.compare_digest): the time taken says nothing about the key."""
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())  # type: ignore[union-attr]


def require_key(request: Request, x_api_key: Annotated[str | None, Header(max_length=256)] = None) -> None:
    expected = request.app.state.services.settings.api_key
    if expected and not key_matches(expected, x_api_key):
        raise HTTPException(401, "X-API-Key: missing or wrong API key")


def require_key_for_batches(request: Request,
                            x_api_key: Annotated[str | None, Header(max_length=256)] = None) -> None:
    if request.app.state.services.settings.batch_requires_key:
        require_key(request, x_api_key)


def error(description: str) -> dict[str, Any]:
    return {"model": schemas.ErrorResponse, "description": description}


Responses = dict[int | str, dict[str, Any]]
INVALID: Responses = {422: error("A field is invalid: `detail` names it."),
           413: error("The body is larger than MAX_BODY_BYTES."),
           503: error("A required backend is down (the store; the index of the method asked for).")}
UNAUTHORIZED: Responses = {401: error("X-API-Key is missing or wrong (only when API_KEY is set).")}


def json_bytes(content: dict) -> Response:
    """The response built by the recommender is already the schema's shape: serialize it as is."""
    return Response(orjson.dumps(content), media_type="application/json")


@router.post("/recommend", response_model=schemas.RecommendResponse, tags=["recommend"], responses=INVALID)
async def recommend(body: schemas.RecommendRequest, svc: Svc, request: Request) -> Response:
    """Top-k movies for a user from their history (popular movies while the history is short)."""
    request.state.method = body.method
    svc.check_filters(body.filters())
    if svc.batcher is None:  # no model loaded
        return json_bytes(await run_in_threadpool(svc.popular_for_user, body.user_id, body.k, body.method,
                                                  body.filters(), body.exclude_rated))
    return json_bytes(await svc.batcher.recommend(body.user_id, body.k, body.method, body.filters(),
                                                  body.exclude_rated))


@router.post("/recommend_batch", response_model=schemas.RecommendBatchResponse, tags=["recommend"],
             responses={**INVALID, **UNAUTHORIZED}, dependencies=[Depends(require_key_for_batches)])
async def recommend_batch(body: schemas.RecommendBatchRequest, svc: Svc, request: Request) -> Response:
    """Recommendations for up to 1,000 users in one call (in slices: single requests are served between them).

    Needs X-API-Key when BATCH_REQUIRES_KEY is set; BATCH_MAX_USERS lowers the 1,000 users cap."""
    request.state.method = body.method
    cap = svc.settings.batch_max_users
    if len(body.user_ids) > cap:
        raise HTTPException(422, f"user_ids: at most {cap} users per batch (BATCH_MAX_USERS), got {len(body.user_ids)}")
    svc.check_filters(body.filters())
    if svc.batcher is None or svc.recommender is None:  # no model loaded
        return json_bytes({"results": await run_in_threadpool(lambda: [
            svc.popular_for_user(u, body.k, body.method, body.filters(), body.exclude_rated) for u in body.user_ids])})
    recs = await svc.batcher.recommend_batch(body.user_ids, body.k, body.method, body.filters(), body.exclude_rated)
    return json_bytes({"results": [r.to_dict() for r in recs]})


@router.post("/update_user", response_model=schemas.UpdateUserResponse, tags=["users"],
             dependencies=[Depends(require_key)],
             responses={**INVALID, **UNAUTHORIZED, 404: error("movie_id is not a movie of the store.")})
def update_user(body: schemas.UpdateUserRequest, svc: Svc) -> dict:
    """Store a rating (acknowledged write), append it to the history and drop the user's cache."""
    added = svc.store.add_rating(body.user_id, body.movie_id, body.rating, body.timestamp)
    if svc.recommender is not None:
        svc.recommender.invalidate(body.user_id)
    svc.metrics.ratings.inc()
    return {"user_id": added["user_id"], "movie_id": added["movie_id"], "rating": added["rating"],
            "n_ratings": added["n_ratings"]}


@router.post("/search_movies", response_model=schemas.SearchResponse, tags=["movies"], responses=INVALID)
def search_movies(body: schemas.SearchRequest, svc: Svc) -> dict:
    """Movies whose title matches the query (case-insensitive; best matches first)."""
    return {"query": body.query, "results": svc.store.search_movies(body.query, body.limit)}


@router.get("/user_stats/{user_id}", response_model=schemas.UserStatsResponse, tags=["users"],
            responses={**INVALID, 404: error("The user has no ratings.")})
def user_stats(user_id: Annotated[int, Path(ge=0, le=schemas.MAX_ID)], svc: Svc) -> UserStats:
    """A user's rating count, mean rating, first/last activity and top genres."""
    stats = svc.store.user_stats(user_id)
    if stats is None:
        raise HTTPException(404, f"user_id: {user_id} has no ratings")
    return stats


@router.get("/user_history/{user_id}", response_model=schemas.UserHistoryResponse, tags=["users"],
            responses={**INVALID, 404: error("The user has no ratings.")})
def user_history(user_id: Annotated[int, Path(ge=0, le=schemas.MAX_ID)], svc: Svc,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> dict:
    """A user's newest ratings, newest first, with each movie's title, year and genres (what the web page shows)."""
    entries = svc.store.user_history(user_id, limit)
    if not entries:
        raise HTTPException(404, f"user_id: {user_id} has no ratings")
    movies = svc.store.get_movies(e.movie_id for e in entries)
    items = []
    for entry in reversed(entries):
        movie = movies.get(entry.movie_id)
        items.append({"movie_id": entry.movie_id, "title": movie["title"] if movie else None,
                      "year": movie["year"] if movie else None, "genres": movie["genres"] if movie else [],
                      "rating": entry.rating, "timestamp": entry.timestamp})
    return {"user_id": user_id, "items": items}


@router.get("/popular_movies", response_model=schemas.PopularResponse, tags=["movies"], responses=INVALID)
def popular_movies(
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    genres: Annotated[list[schemas.Genre] | None, Query(max_length=50)] = None,
    year_min: Annotated[int | None, Query(ge=1800, le=2100)] = None,
    year_max: Annotated[int | None, Query(ge=1800, le=2100, description="At least year_min.")] = None,
    min_rating: Annotated[float | None, Query(ge=0, le=5)] = None,
) -> dict:
    """The most rated movies, optionally filtered."""
    if year_min is not None and year_max is not None and year_min > year_max:
        raise HTTPException(422, f"year_min: {year_min} is after year_max {year_max}")
    svc.check_filters(schemas.Filters(genres=tuple(genres or ())))
    return {"results": svc.store.popular_movies(limit, genres, year_min, year_max, min_rating)}


@router.get("/health", tags=["ops"], responses={503: {"description": "The API cannot serve (the store is down)."}})
def health(svc: Svc, request: Request, x_api_key: Annotated[str | None, Header(max_length=256)] = None) -> JSONResponse:
    """Status of every dependency: 200 when the API can serve, 503 otherwise.

    Each component says `ok`; the details (addresses, paths, errors) only with a valid X-API-Key (and in
    the log whenever the set of failing components or their reasons change)."""
    serving, healthy, components = svc.health()
    status = "ok" if healthy else "degraded" if serving else "down"
    problems = {name: part["detail"] for name, part in components.items() if not part["ok"]}
    if problems != getattr(request.app.state, "health_logged", None):  # once per change, not at every probe
        request.app.state.health_logged = problems
        log.log(logging.WARNING if problems else logging.INFO, "health",
                extra={"fields": {"status": status, "problems": problems}})
    if not key_matches(svc.settings.api_key, x_api_key):
        components = {name: {"ok": part["ok"]} for name, part in components.items()}
    return JSONResponse({"status": status, "components": components}, status_code=200 if serving else 503)


@router.get("/stats", tags=["ops"])
def stats(svc: Svc) -> dict:
    """Counts, model and index versions, cache hit ratio and a latency summary."""
    return svc.stats()


@router.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(svc: Svc) -> Response:
    """Prometheus text format."""
    svc.observe_circuits()
    return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)
