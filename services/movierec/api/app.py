"""The FastAPI application: `create_app(settings)`; run with `movierec serve` or `uvicorn --factory movierec.api.app:app`."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from movierec.api import logs, tasks
from movierec.api.routes import router
from movierec.api.schemas import ErrorResponse
from movierec.api.services import Services
from movierec.api.web import install_web
from movierec.serving.recommender import MethodUnavailable
from movierec.settings import Settings
from movierec.store import InvalidValue, StoreUnavailable, UnknownMovie

log = logging.getLogger("movierec.api")


def _field_errors(exc: RequestValidationError) -> str:
    """'k: Input should be less than or equal to 1000; rating: ...' from pydantic's error list."""
    parts = []
    for error in exc.errors():
        location = [str(p) for p in error.get("loc", ())]
        if location and location[0] in ("body", "query", "path", "header"):
            location = location[1:]  # where it came from, not the field
        field = ".".join(location) or "body"
        message = error.get("msg", "invalid")
        if error.get("type") in ("literal_error", "enum") and isinstance(error.get("input"), str):
            message += f", got {error['input'][:64]!r}"  # which value, bounded
        parts.append(f"{field}: {message}")
    return "; ".join(parts)


REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")  # a given X-Request-ID is kept only if it looks like one


class LimitBody:
    """413 for a body larger than `max_bytes`, before anything parses it (Content-Length or streamed).

    The body (at most `max_bytes`) is read here and handed on, so the limit holds for chunked bodies too.
    """

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._too_large(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        payload = orjson.dumps({"detail": f"body: larger than {self.max_bytes} bytes (MAX_BODY_BYTES)"})
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


class ObserveRequests:
    """Request id, latency metric and one JSON log line per request.

    A plain ASGI middleware: Starlette's `@app.middleware("http")` wraps every response in extra
    tasks and streams, which cost more than a cached /recommend itself.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]  # capped: echoed and logged
        state = scope.setdefault("state", {})
        state["request_id"], state["method"] = request_id, None
        status, start = 500, time.perf_counter()

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            method = state.get("method") or "-"
            services = getattr(scope["app"].state, "services", None)
            if services is not None:
                services.metrics.requests.labels(endpoint, method, str(status)).observe(seconds)
            log.info("request", extra={"fields": {
                "request_id": request_id, "http": scope["method"], "endpoint": endpoint, "method": method,
                "status": status, "outcome": "ok" if status < 400 else "client_error" if status < 500 else "error",
                "latency_ms": round(seconds * 1000, 3),
            }})


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    logs.configure()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.api_key is not None and not settings.api_key.strip():
            log.warning("API_KEY is set but empty: writes are NOT protected (unset it, or set a real key)")
        app.state.services = Services.start(settings)
        log.info("api started", extra={"fields": {"home": str(settings.movierec_home)}})
        yield
        app.state.services.close()

    app = FastAPI(
        title="movierec",
        version="0.1.0",
        description="Sequential movie recommendations (gSASRec) over MovieLens.",
        lifespan=lifespan,
    )
    app.include_router(router)
    app.include_router(tasks.router)  # POST /admin/reindex, GET /tasks/{id} (api/tasks.py)
    install_web(app, settings.web_path)  # the page at /, behind every API route (api/web.py)

    app.add_middleware(LimitBody, max_bytes=settings.max_body_bytes)
    app.add_middleware(ObserveRequests)  # outermost: a 413 is counted and logged too
    describe_errors(app)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _field_errors(exc)}, status_code=422)

    @app.exception_handler(UnknownMovie)
    async def unknown_movie(request: Request, exc: UnknownMovie) -> JSONResponse:
        return JSONResponse({"detail": f"movie_id: {exc.movie_id} is not a known movie"}, status_code=404)

    @app.exception_handler(InvalidValue)
    async def invalid_value(request: Request, exc: InvalidValue) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(MethodUnavailable)
    async def unavailable(request: Request, exc: MethodUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503)

    return app


def describe_errors(app: FastAPI) -> None:
    """Make the OpenAPI document say what the API does: errors are `{"detail": "..."}` (never pydantic's
    list), and `genres` lists the catalogue's genres (known once the services have started)."""
    make = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = make()
        schemas = document.get("components", {}).get("schemas", {})
        if "HTTPValidationError" in schemas:  # every 422 (a route's own, or FastAPI's default) is one line
            schemas["HTTPValidationError"] = {
                "title": "HTTPValidationError", "type": "object", "required": ["detail"],
                "properties": {"detail": {"type": "string", "title": "Detail",
                                          "description": "Which field is invalid, and why."}}}
            schemas.pop("ValidationError", None)
        for operations in document["paths"].values():  # a body that is not JSON (or not UTF-8): FastAPI's 400
            for operation in operations.values():
                if "requestBody" in operation:
                    operation["responses"].setdefault("400", {
                        "description": "The body is not JSON.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
        if "ErrorResponse" not in schemas:
            schemas["ErrorResponse"] = ErrorResponse.model_json_schema()
        services = getattr(app.state, "services", None)
        if services is not None:
            genres = sorted(services.known_genres())
            for name in ("RecommendRequest", "RecommendBatchRequest"):
                field = schemas.get(name, {}).get("properties", {}).get("genres", {})
                for option in field.get("anyOf", []):
                    if option.get("type") == "array":
                        option["items"]["enum"] = genres
            for parameter in document["paths"].get("/popular_movies", {}).get("get", {}).get("parameters", []):
                if parameter["name"] == "genres":
                    for option in parameter["schema"].get("anyOf", []):
                        if option.get("type") == "array":
                            option["items"]["enum"] = genres
            cap = services.settings.batch_max_users
            field = schemas.get("RecommendBatchRequest", {}).get("properties", {}).get("user_ids", {})
            field["maxItems"] = min(field.get("maxItems", cap), cap)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def app() -> FastAPI:  # uvicorn --factory movierec.api.app:app
    return create_app()
