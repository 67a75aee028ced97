"""What the routes share: the documented error shapes, and cancelling work nobody waits for."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

from guardrail.server.errors import APIError
from guardrail.server.schemas import ErrorResponse

T = TypeVar("T")

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed request (bad JSON, invalid UTF-8, not a JSON object)"),
        (401, "Missing or invalid API key"),
        (413, "Request body, prompt, batch or session over its limit (the message names it)"),
        (421, "Host not allowed (no API key is set and the Host header names another server)"),
        (422, "Wrong field types or values, text the guard cannot read, or a config laxer than "
              "the server's"),
        (429, "Model queue full; retry after Retry-After seconds"),
        (503, "Model not loaded yet"),
    )
}
SESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorResponse, "description": "Unknown or deleted session"},
    409: {"model": ErrorResponse, "description": "Session already closed or intercepted"},
    410: {"model": ErrorResponse, "description": "Session expired or evicted"},
}


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body was read already, so the next message is
    the hang-up)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client hangs up first.

    Cancelling cancels the awaited futures, so steps still waiting for the tokenizer or the
    batcher are dropped before they reach the model (the batcher skips cancelled work).
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        watcher.cancel()
    if task.cancelled():
        raise APIError(499, "client closed the request", code="client_closed")
    return task.result()
