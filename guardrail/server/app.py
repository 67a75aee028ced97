"""The FastAPI app factory: routes, middleware, error handlers, model lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

import guardrail
from guardrail.model.engine import SafetyModel
from guardrail.server.errors import add_error_handlers
from guardrail.server.middleware import (
    AuthMiddleware,
    BodyLimitMiddleware,
    HostAllowListMiddleware,
    MetricsMiddleware,
    RouteLabeler,
)
from guardrail.server.routes import chat, check, generate, health, moderations, sessions, ui
from guardrail.server.settings import Settings
from guardrail.server.state import ServerState
from guardrail.server.tracing import instrument_app

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("guardrail.server")


def create_app(settings: Settings | None = None, safety_model: SafetyModel | None = None, *,
               tracer_provider: TracerProvider | None = None) -> FastAPI:
    """Build the sidecar app; loads the model in the background unless one is given.

    Liveness answers at once; readiness (and the model routes) wait for the model. With
    tracing on (`tracer_provider` given, `Settings.tracing`, or an SDK provider configured),
    server spans join the caller's `traceparent`.
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
    routers = (health.router, check.router, generate.router, sessions.router, chat.router, moderations.router,
               ui.router)
    for router in routers:
        app.include_router(router)
    app.mount("/static", ui.static_files(), name="static")
    add_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(AuthMiddleware, api_key=settings.api_key)
    if settings.cors_origins:  # off unless asked for: a browser page elsewhere cannot call the API
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["authorization", "content-type"])
    if not settings.api_key:  # no key: only requests addressed to this server's names (DNS rebinding)
        app.add_middleware(HostAllowListMiddleware, allowed=settings.host_allow_list())
    app.add_middleware(MetricsMiddleware, metrics=state.metrics,  # outermost: sees 401, 413, 421 too
                       labeler=RouteLabeler(app.router))
    state.tracer = instrument_app(app, settings, tracer_provider)
    return app


async def _load(state: ServerState) -> None:
    from guardrail.guard import load_safety_model

    s = state.settings
    try:
        model = await asyncio.to_thread(load_safety_model, s.model, s.head, device=s.device, dtype=s.dtype,
                                            quantize=s.quantize)
    except Exception as exc:
        state.load_error = f"{type(exc).__name__}: {exc}"
        log.exception("model failed to load")
        return
    try:
        state.attach(model)
    except ValueError:  # e.g. category rules naming categories this head lacks (load_error is set)
        log.exception("model failed to attach")
        return
    log.info("model %s ready", model.name)


async def _sweep(state: ServerState) -> None:
    """Expire idle sessions even when nobody touches them, so their memory comes back."""
    interval = min(5.0, state.settings.session_ttl_s / 4)
    while True:
        await asyncio.sleep(interval)
        if state.sessions is not None:
            state.sessions.sweep()
