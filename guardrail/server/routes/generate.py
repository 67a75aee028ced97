"""POST /v1/generate: guarded generation as server-sent events (token, score, intercept, done)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from guardrail.model.decoding import SamplingParams
from guardrail.model.prompts import to_messages
from guardrail.server.errors import APIError, error_body
from guardrail.server.generation import SteppedGeneration
from guardrail.server.metrics import tracked
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import GenerateRequest
from guardrail.server.state import StateDep
from guardrail.types import InterceptEvent

router = APIRouter(tags=["generate"])
log = logging.getLogger("guardrail.server")


@router.post("/v1/generate", responses={**ERRORS, 200: {
    "content": {"text/event-stream": {}},
    "description": "SSE: `event: token|score|intercept|done`, `data:` the event as JSON",
}})
async def generate(body: GenerateRequest, state: StateDep, request: Request) -> EventSourceResponse:
    batcher, _ = state.require()
    if body.max_new_tokens > state.settings.max_new_tokens:
        raise APIError(422, f"max_new_tokens must be <= {state.settings.max_new_tokens}",
                       param="max_new_tokens", code="too_many_tokens")
    to_messages(body.conversation)  # InputError before the stream starts
    config = state.config_for(body.config)
    await unless_disconnected(request, state.prompt_ids(body.conversation))  # 413 over the budget
    batcher.admit()
    params = SamplingParams(max_new_tokens=body.max_new_tokens, temperature=body.temperature,
                            top_p=body.top_p, seed=body.seed)
    gen = SteppedGeneration(batcher, state.text, body.conversation, config, params,
                            prefill=body.prefill, guard=body.guard)
    log.debug("generate prompt=%s", state.text_for_log(body.conversation))

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for event in gen.events():
                if isinstance(event, InterceptEvent):
                    state.metrics.intercepts.inc(source="generate")
                yield {"event": event.type, "data": event.model_dump_json()}
        except Exception as exc:  # headers are sent: report in the stream, keep serving
            log.exception("generation failed")
            yield {"event": "error", "data": json.dumps(error_body(f"generation failed: {type(exc).__name__}",
                                                                   type="server_error"))}

    return EventSourceResponse(tracked(state.metrics.active_streams, events()), ping=15)
