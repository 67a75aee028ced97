"""POST /v1/chat/completions: OpenAI-compatible, streaming or not, local or proxied upstream."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

from guardrail.model.prompts import to_messages
from guardrail.server.chat import ChatEvent, ChatMeta, completion_object, local_chat, sse_chunks
from guardrail.server.errors import APIError
from guardrail.server.metrics import tracked
from guardrail.server.proxy import ProxyStream
from guardrail.server.routes import models
from guardrail.server.routes.common import ERRORS
from guardrail.server.schemas import ChatCompletionRequest
from guardrail.server.state import StateDep

router = APIRouter(tags=["openai"])
router.include_router(models.router)  # /v1/models travels with the chat routes
log = logging.getLogger("guardrail.server")


def refuse_unsupported(body: ChatCompletionRequest) -> None:
    """Local mode: a parameter the hosted model cannot honour is a 422 naming it, never ignored."""
    name = body.unsupported_locally()
    if name is not None:
        raise APIError(422, f"unsupported parameter '{name}': the local model does not support it "
                       "(see docs/openai-compatibility.md)", code="unsupported_parameter", param=name)


@router.post("/v1/chat/completions", responses={
    **ERRORS, 502: {"description": "Upstream failed"},
    200: {"content": {"application/json": {}, "text/event-stream": {}},
          "description": "A chat.completion, or with stream=true SSE chunks, then [DONE]"},
})
async def chat_completions(
    body: ChatCompletionRequest,
    state: StateDep,
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
) -> Any:
    """Answer locally under strategic decoding, or moderate an upstream's answer (--upstream).

    The last chunk (or the completion) carries a `guardrail` field; when the guard cut the
    answer, finish_reason is "content_filter" and `guardrail.intercept` says where.
    """
    batcher, _ = state.require()
    if not state.settings.upstream:
        refuse_unsupported(body)
    messages = body.chat_messages()
    to_messages(messages)  # InputError (422) before anything is sent
    await state.prompt_ids(messages, field="messages")  # 413 over the prompt-token budget
    batcher.admit()
    config = state.config_for(body.guardrail, field="guardrail")
    log.debug("chat messages=%s", state.text_for_log(messages))
    events: AsyncIterator[ChatEvent]
    background: BackgroundTask | None = None
    if state.settings.upstream:
        proxy = ProxyStream(state, body, config, authorization, request.headers)
        await proxy.open()  # upstream errors become a 502 here, before any output
        meta = proxy.meta
        events = proxy.events()
        background = BackgroundTask(proxy.aclose)
    else:
        meta = ChatMeta(model=state.settings.model_name)  # the served model, whatever was asked
        events = local_chat(state, body, config)
    if body.stream:
        chunks = sse_chunks(meta, events, include_usage=body.include_usage)
        return EventSourceResponse(tracked(state.metrics.active_streams, chunks), ping=15,
                                   background=background)
    try:
        return JSONResponse(await completion_object(meta, events))
    finally:
        if background is not None:
            await background()
