"""Server-sent events of a streamed response, parsed by httpx-sse (sync and async)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
from httpx_sse import EventSource, ServerSentEvent
from pydantic import TypeAdapter

from guardrail.client.errors import SidecarUnavailableError
from guardrail.types import GenerationEvent

_EVENTS: TypeAdapter[GenerationEvent] = TypeAdapter(GenerationEvent)
SSEMessage = ServerSentEvent
"""One server-sent event (`event`, `data`, `id`, `retry`)."""


def parse_event(message: ServerSentEvent) -> GenerationEvent:
    """A generation event; an `error` event means the sidecar failed mid-stream."""
    if message.event == "error":
        raise SidecarUnavailableError(f"generation failed on the sidecar: {message.data}")
    return _EVENTS.validate_json(message.data)


def iter_events(response: httpx.Response) -> Iterator[GenerationEvent]:
    for message in EventSource(response).iter_sse():
        yield parse_event(message)


async def aiter_events(response: httpx.Response) -> AsyncIterator[GenerationEvent]:
    async for message in EventSource(response).aiter_sse():
        yield parse_event(message)


__all__ = ["SSEMessage", "aiter_events", "iter_events", "parse_event"]
