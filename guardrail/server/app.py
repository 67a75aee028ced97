"""The FastAPI app factory: routes, middleware, error handlers, model lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import guardrail
from guardrail.model.engine import SafetyModel
from guardrail.model.prompts import InputError
from guardrail.server.batcher import BatcherStoppedError, QueueFullError
from guardrail.server.errors import APIError, error_response
from guardrail.server.middleware import AuthMiddleware, BodyLimitMiddleware, MetricsMiddleware
from guardrail.server.routes import chat, check, generate, health, sessions, ui
from guardrail.server.settings import Settings
from guardrail.server.state import ServerState

log = logging.getLogger("guardrail.server")


def create_app(settings: Settings | None = None, safety_model: SafetyModel | None = None) -> FastAPI:
    """Build the sidecar app; loads the model in the background unless one is given.

    Liveness answers at once; readiness (and the model routes) wait for the model.
    """
    settings = settings or Settings()
    state = ServerState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.upstream:
            timeout = httpx.Timeout(settings.upstream_timeout_s, connect=10.0)
            state.upstream = httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=256))
        loader: asyncio.Task[None] | None = None
        if safety_model is not None:
            state.attach(safety_model)
        else:
            loader = asyncio.create_task(_load(state))
        sweeper = asyncio.create_task(_sweep(state))
        try:
            yield
        finally:
            sweeper.cancel()
            if loader is not None:
                loader.cancel()
            if state.batcher is not None:
                await asyncio.to_thread(state.batcher.stop)
            state.text.stop()
            if state.upstream is not None:
                await state.upstream.aclose()

    app = FastAPI(title="guardrail sidecar", version=guardrail.__version__, lifespan=lifespan,
                  description="Token-level safety checks, guarded generation and stream moderation "
                              "with an explicit [CLS] safety signal.")
    app.state.guardrail = state
    for router in (health.router, check.router, generate.router, sessions.router, chat.router, ui.router):
        app.include_router(router)
    app.mount("/static", ui.static_files(), name="static")
    _add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    if settings.cors_origins:  # off unless asked for: a browser page elsewhere cannot call the API
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["authorization", "content-type"])
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)  # outermost: sees 401 and 413 too
    return app


async def _load(state: ServerState) -> None:
    from guardrail.guard import load_safety_model

    s = state.settings
    try:
        model = await asyncio.to_thread(load_safety_model, s.model, s.head, device=s.device, dtype=s.dtype)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")
        return
    state.attach(model)
    log.info("model %s ready", model.name)


async def _sweep(state: ServerState) -> None:
    """Expire idle sessions even when nobody touches them, so their memory comes back."""
    interval = min(5.0, state.settings.session_ttl_s / 4)
    while True:
        await asyncio.sleep(interval)
        if state.sessions is not None:
            state.sessions.sweep()


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(InputError)
    async def input_error(_request: Request, exc: InputError) -> JSONResponse:
        return error_response(400, str(exc), code="invalid_input")

    @app.exception_handler(QueueFullError)
    async def queue_full(_request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(429, str(exc), type="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})

    @app.exception_handler(BatcherStoppedError)
    async def stopped(_request: Request, exc: BatcherStoppedError) -> JSONResponse:
        return error_response(503, str(exc), type="server_error", code="shutting_down",
                              headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            ctx: Any = errors[0].get("ctx") or {}
            return error_response(400, f"malformed JSON: {ctx.get('error', 'cannot parse body')}",
                                  code="malformed_json")
        not_object = ("model_attributes_type", "dict_type", "missing")
        if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in not_object for e in errors):
            return error_response(400, "request body must be a JSON object "
                                  "(sent with Content-Type: application/json)", code="malformed_json")
        parts = []
        for e in errors[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
            parts.append(f"{where}: {e.get('msg', 'invalid')}".removeprefix("body: "))
        return error_response(422, "; ".join(parts), code="invalid_fields")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), code=code,
                              headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error",
                              code="internal_error")
