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
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from guardrail.model.decoding import SamplingParams
from guardrail.model.prompts import encode_prompt, encode_text
from guardrail.server.errors import APIError
from guardrail.server.generation import SteppedGeneration
from guardrail.server.schemas import ChatCompletionRequest, FiredCategories, GuardrailInfo
from guardrail.server.state import ServerState
from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    TokenEvent,
    Verdict,
    label_for,
)

DEFAULT_MAX_TOKENS = 256
log = logging.getLogger("guardrail.server")


@dataclass
class ChatDelta:
    """Text safe to show; `logprobs` are the upstream's entries for text released with it."""

    text: str
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class ChatToolCall:
    """One tool-call delta exactly as the upstream streamed it, released once its call passed."""

    delta: dict[str, Any]


@dataclass
class ChatEnd:
    finish_reason: str
    info: GuardrailInfo
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


@dataclass
class ChatMeta:
    id: str = field(default_factory=lambda: "chatcmpl-" + secrets.token_hex(12))
    model: str = "guardrail"
    created: int = field(default_factory=lambda: int(time.time()))
    system_fingerprint: str | None = None


ChatEvent = ChatDelta | ChatToolCall | ChatEnd


def max_tokens(request: ChatCompletionRequest, limit: int) -> int:
    return min(request.max_completion_tokens or request.max_tokens or DEFAULT_MAX_TOKENS, limit)


class StopScanner:
    """Cuts text at the first stop sequence to complete; withholds a tail that may still become one.

    "First" is the one whose last character comes first, as a model generating the text
    character by character would meet it, so how the text is split changes nothing.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.matched = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop sequence was reached)."""
        self.pending += text
        hits = [(i + len(s), i, s) for i, s in ((self.pending.find(s), s) for s in self.stops) if i >= 0]
        if hits:
            _, index, self.matched = min(hits)
            out, self.pending = self.pending[:index], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), keep, -1):
                if stop.startswith(self.pending[-k:]):
                    keep = k
                    break
        out = self.pending[: len(self.pending) - keep]
        self.pending = self.pending[len(self.pending) - keep :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def prompt_verdict_of(event: ScoreEvent, config: GuardConfig) -> Verdict:
    """The prompt check's verdict from its score event: the binary label, made unsafe by a
    fired `block` category as `verdict_for` does, with the categories that fired."""
    blocked = event.blocked_categories
    label = "unsafe" if blocked else label_for(event.score, config.threshold)
    return Verdict(label=label, score=event.score, threshold=config.threshold,
                   categories=event.categories, flagged_categories=event.flagged_categories,
                   blocked_categories=blocked)


async def local_chat(state: ServerState, request: ChatCompletionRequest,
                     config: GuardConfig) -> AsyncIterator[ChatEvent]:
    """The hosted model answers under strategic decoding; `stop` ends it early."""
    batcher, _ = state.require()
    limit = max_tokens(request, state.settings.max_new_tokens)
    params = SamplingParams(max_new_tokens=limit, temperature=request.temperature or 0.0,
                            top_p=request.top_p or 1.0, seed=request.seed)
    messages = request.chat_messages()
    gen = SteppedGeneration(batcher, state.text, messages, config, params)
    intercept: InterceptEvent | None = None
    prompt_verdict: Verdict | None = None
    scanner = StopScanner(request.stop_sequences)
    released = ""
    checks = 0
    fired = FiredCategories()
    events = cast(AsyncGenerator[GenerationEvent, None], gen.events())
    try:
        async for event in events:
            if isinstance(event, TokenEvent):
                text, stopped = scanner.push(event.text)
                released += text
                if text:
                    yield ChatDelta(text)
                if stopped:
                    break
            elif isinstance(event, ScoreEvent):
                checks += 1
                if prompt_verdict is None and checks == 1 and event.index == 0 and config.check_prompt:
                    prompt_verdict = prompt_verdict_of(event, config)
                else:
                    fired.add(event.flagged_categories, event.blocked_categories)
            elif isinstance(event, InterceptEvent):
                intercept = event
                state.metrics.intercepts.inc(source="chat")
            elif isinstance(event, DoneEvent):
                tail = scanner.flush()
                if tail:
                    yield ChatDelta(tail)
                usage = event.usage
                if intercept is not None:
                    reason = "content_filter"
                else:
                    reason = "length" if usage.completion_tokens >= limit else "stop"
                info = GuardrailInfo.of(mode="local", prompt=prompt_verdict, checks=usage.checks,
                                        intercept=intercept, response=fired)
                yield ChatEnd(reason, info, usage_dict(usage.prompt_tokens, usage.completion_tokens))
                return
    finally:
        await events.aclose()  # a stop sequence ends the generation: its passes stop here
    # a stop sequence was reached: count what the answer used up to and including it
    model = batcher.model
    prompt_tokens, completion_tokens = await state.text.run(lambda: (
        len(encode_prompt(model.tokenizer, messages)),
        len(encode_text(model.tokenizer, released + scanner.matched))))
    info = GuardrailInfo.of(mode="local", prompt=prompt_verdict, checks=checks, response=fired)
    yield ChatEnd("stop", info, usage_dict(prompt_tokens, completion_tokens))


def stream_chunk(meta: ChatMeta, delta: dict[str, Any], finish_reason: str | None = None,
                 extra: dict[str, Any] | None = None, logprobs: list[dict[str, Any]] | None = None) -> str:
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs, "refusal": None}
    body = _envelope(meta, "chat.completion.chunk")
    body["choices"] = [choice]
    body.update(extra or {})
    return json.dumps(body)


def _envelope(meta: ChatMeta, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": meta.id, "object": kind, "created": meta.created, "model": meta.model}
    if meta.system_fingerprint is not None:
        body["system_fingerprint"] = meta.system_fingerprint
    return body


def _error_event(error: dict[str, Any]) -> dict[str, str]:
    """The OpenAI SDKs raise on a `data: {"error": ...}` event, so a broken stream is never a clean end."""
    return {"data": json.dumps({"error": error})}


async def sse_chunks(meta: ChatMeta, events: AsyncIterator[ChatEvent], *,
                     include_usage: bool = False) -> AsyncIterator[dict[str, str]]:
    """OpenAI streaming: role first, then content and tool-call deltas, a final chunk with the
    finish reason, a usage chunk (empty choices) when the client asked for it, then [DONE]."""
    started = False
    try:
        async for event in events:
            if not started:  # after the first event, so an upstream's id and model are known
                started = True
                yield {"data": stream_chunk(meta, {"role": "assistant", "content": ""})}
            if isinstance(event, ChatDelta):
                if event.text or event.logprobs:
                    yield {"data": stream_chunk(meta, {"content": event.text}, logprobs=event.logprobs)}
                continue
            if isinstance(event, ChatToolCall):
                yield {"data": stream_chunk(meta, {"tool_calls": [event.delta]})}
                continue
            if event.error is not None:
                yield _error_event(event.error)
                return
            yield {"data": stream_chunk(meta, {}, event.finish_reason,
                                        {"guardrail": event.info.model_dump(mode="json")})}
            if include_usage and event.usage is not None:
                usage = _envelope(meta, "chat.completion.chunk")
                usage.update(choices=[], usage=event.usage)
                yield {"data": json.dumps(usage)}
    except Exception as exc:  # headers are sent: end with an error event, not a broken connection
        log.exception("chat stream failed")
        yield _error_event({"message": f"generation failed: {type(exc).__name__}",
                            "type": "server_error", "code": "stream_failed"})
        return
    yield {"data": "[DONE]"}


def merge_tool_calls(deltas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Streamed tool-call deltas joined into whole calls, in index order (the non-streamed shape)."""
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        call = calls.setdefault(int(delta.get("index", 0)), {"id": None, "type": "function",
                                                              "function": {"name": "", "arguments": ""}})
        for key, value in delta.items():
            if key == "function" and isinstance(value, dict):
                for name, part in value.items():
                    if name in ("name", "arguments") and isinstance(part, str):
                        call["function"][name] += part
                    elif part is not None:
                        call["function"][name] = part
            elif key != "index" and value is not None:
                call[key] = value
    return [calls[i] for i in sorted(calls)]


async def completion_object(meta: ChatMeta, events: AsyncIterator[ChatEvent]) -> dict[str, Any]:
    """OpenAI non-streaming: one `chat.completion` with the whole (released) text and tool calls."""
    parts: list[str] = []
    logprobs: list[dict[str, Any]] | None = None
    tool_deltas: list[dict[str, Any]] = []
    end: ChatEnd | None = None
    async for event in events:
        if isinstance(event, ChatDelta):
            parts.append(event.text)
            if event.logprobs is not None:
                logprobs = (logprobs or []) + event.logprobs
        elif isinstance(event, ChatToolCall):
            tool_deltas.append(event.delta)
        else:
            end = event
    if end is None or end.error is not None:
        reason = (end.error or {}).get("message", "stream ended early") if end else "stream ended early"
        raise APIError(502, f"upstream failed: {reason}", type="upstream_error", code="upstream_error")
    text = "".join(parts)
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_deltas else None,
                               "refusal": None}
    if tool_deltas:
        message["tool_calls"] = merge_tool_calls(tool_deltas)
    body = _envelope(meta, "chat.completion")
    body["choices"] = [{"index": 0, "message": message, "finish_reason": end.finish_reason,
                        "logprobs": None if logprobs is None else {"content": logprobs, "refusal": None}}]
    if end.usage is not None:
        body["usage"] = end.usage
    body["guardrail"] = end.info.model_dump(mode="json")
    return body
