"""The FastAPI application: `create_app(settings)`; run with `movierec serve` or `uvicorn --factory movierec.api.app:app`."""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from movierec.api import logs
from movierec.api.routes import router
from movierec.api.services import Services
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
        parts.append(f"{field}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)


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
        request_id = given or uuid.uuid4().hex[:16]
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

    app.add_middleware(ObserveRequests)

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


def app() -> FastAPI:  # uvicorn --factory movierec.api.app:app
    return create_app()
