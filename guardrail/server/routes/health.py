"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from guardrail.server.state import StateDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process serves HTTP (the model may still be loading)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    """The model is loaded and its worker runs: 200, else 503."""
    batcher = state.batcher
    if state.ready.is_set() and batcher is not None and batcher.running and state.model is not None:
        return JSONResponse({"status": "ready", "model": state.model.name,
                             "mode": "proxy" if state.settings.upstream else "local"})
    body = {"status": "failed" if state.load_error else "loading", "error": state.load_error}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "1"})


@router.get("/metrics", response_class=Response)
async def metrics(state: StateDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text format, or OpenMetrics when the scraper's Accept header asks for it."""
    body, content_type = state.metrics.exposition(accept)
    return Response(body, media_type=content_type)
