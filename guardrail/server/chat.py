"""OpenAI-compatible chat completions: local strategic decoding and the wire formatting.

Both modes (local and proxy) produce the same internal events, `ChatDelta` for text that
is safe to show and one `ChatEnd`; this module turns them into OpenAI chunks or one
completion object, with the guard's verdict in an extra `guardrail` field.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from guardrail.model.decoding import SamplingParams
from guardrail.server.errors import APIError
from guardrail.server.generation import SteppedGeneration
from guardrail.server.schemas import ChatCompletionRequest, GuardrailInfo
from guardrail.server.state import ServerState
from guardrail.types import DoneEvent, GuardConfig, InterceptEvent, ScoreEvent, TokenEvent, Verdict

DEFAULT_MAX_TOKENS = 256
log = logging.getLogger("guardrail.server")


@dataclass
class ChatDelta:
    text: str


@dataclass
class ChatEnd:
    finish_reason: str
    info: GuardrailInfo
    usage: dict[str, int] | None = None
    error: dict[str, Any] | None = None


@dataclass
class ChatMeta:
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    model: str = "guardrail"
    created: int = field(default_factory=lambda: int(time.time()))


ChatEvent = ChatDelta | ChatEnd


def max_tokens(request: ChatCompletionRequest, limit: int) -> int:
    return min(request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS, limit)


async def local_chat(state: ServerState, request: ChatCompletionRequest,
                     config: GuardConfig) -> AsyncIterator[ChatEvent]:
    """The hosted model answers under strategic decoding."""
    batcher, _ = state.require()
    limit = max_tokens(request, state.settings.max_new_tokens)
    params = SamplingParams(max_new_tokens=limit, temperature=request.temperature or 0.0,
                            top_p=request.top_p or 1.0, seed=request.seed)
    gen = SteppedGeneration(batcher, state.text, request.chat_messages(), config, params)
    intercept: InterceptEvent | None = None
    prompt_verdict: Verdict | None = None
    async for event in gen.events():
        if isinstance(event, TokenEvent):
            yield ChatDelta(event.text)
        elif isinstance(event, ScoreEvent) and prompt_verdict is None and event.index == 0:
            prompt_verdict = Verdict(label="unsafe" if event.score >= config.threshold else "safe",
                                     score=event.score, threshold=config.threshold)
        elif isinstance(event, InterceptEvent):
            intercept = event
            state.metrics.intercepts.inc(source="chat")
        elif isinstance(event, DoneEvent):
            usage = event.usage
            if intercept is not None:
                reason = "content_filter"
            else:
                reason = "length" if usage.completion_tokens >= limit else "stop"
            info = GuardrailInfo(intercepted=intercept is not None, intercept=intercept,
                                 prompt=prompt_verdict, checks=usage.checks, mode="local")
            yield ChatEnd(reason, info, {
                "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            })


def stream_chunk(meta: ChatMeta, delta: dict[str, Any], finish_reason: str | None = None,
                 extra: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {
        "id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }
    body.update(extra or {})
    return json.dumps(body)


async def sse_chunks(meta: ChatMeta, events: AsyncIterator[ChatEvent]) -> AsyncIterator[dict[str, str]]:
    """OpenAI streaming: role first, then content deltas, a final chunk, then [DONE]."""
    yield {"data": stream_chunk(meta, {"role": "assistant", "content": ""})}
    try:
        async for event in events:
            if isinstance(event, ChatDelta):
                if event.text:
                    yield {"data": stream_chunk(meta, {"content": event.text})}
                continue
            if event.error is not None:
                yield {"data": json.dumps({"error": event.error})}
                return
            extra: dict[str, Any] = {"guardrail": event.info.model_dump(mode="json")}
            if event.usage is not None:
                extra["usage"] = event.usage
            yield {"data": stream_chunk(meta, {}, event.finish_reason, extra)}
    except Exception as exc:  # headers are sent: end with an error event, not a broken connection
        log.exception("chat stream failed")
        yield {"data": json.dumps({"error": {"message": f"generation failed: {type(exc).__name__}",
                                             "type": "server_error", "code": "stream_failed"}})}
        return
    yield {"data": "[DONE]"}


async def completion_object(meta: ChatMeta, events: AsyncIterator[ChatEvent]) -> dict[str, Any]:
    """OpenAI non-streaming: one `chat.completion` with the whole (released) text."""
    parts: list[str] = []
    end: ChatEnd | None = None
    async for event in events:
        if isinstance(event, ChatDelta):
            parts.append(event.text)
        else:
            end = event
    if end is None or end.error is not None:
        message = (end.error or {}).get("message", "stream ended early") if end else "stream ended early"
        raise APIError(502, f"upstream failed: {message}", type="upstream_error", code="upstream_error")
    return {
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(parts)},
                     "finish_reason": end.finish_reason, "logprobs": None}],
        "usage": end.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "guardrail": end.info.model_dump(mode="json"),
    }
