"""Translate between LangChain values and what the guard reads, and relay moderated chunks.

Shared by the Runnable, the chat-model wrapper and the agent middleware, so all three judge
the same request text and release text the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessageChunk, BaseMessage, BaseMessageChunk, convert_to_messages
from langchain_core.prompt_values import PromptValue

from guardrail.streaming import PromptLike, StreamModerator
from guardrail.types import ChunkVerdict, Verdict

VERDICT_EVENT = "guardrail_verdict"
"""Name of the custom callback event carrying each verdict."""

METADATA_KEY = "guardrail"
"""Key of the verdict summary in an AIMessage's `response_metadata`."""

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "user", "function": "user"}
_PROMPT_KEYS = ("messages", "input", "question", "query", "prompt", "text")
_OUTPUT_KEYS = ("output", "answer", "text", "content", "result")


def messages_to_prompt(messages: Sequence[BaseMessage]) -> PromptLike | None:
    """Chat messages in the guard's shape; tool results count as user input (untrusted)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = _ROLES.get(message.type)
        if role is None:
            chat_role = getattr(message, "role", "user")
            role = chat_role if chat_role in ("system", "user", "assistant") else "user"
        out.append({"role": role, "content": message.text})
    return out or None


def to_prompt(value: Any, prompt_key: str | None = None) -> PromptLike | None:
    """The request in a runnable's input: a string, a prompt value, messages, or a dict holding one."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, PromptValue):
        return messages_to_prompt(value.to_messages())
    if isinstance(value, BaseMessage):
        return messages_to_prompt([value])
    if isinstance(value, dict):
        if prompt_key is not None:
            if prompt_key not in value:
                raise KeyError(f"input has no key {prompt_key!r}")
            return to_prompt(value[prompt_key])
        for key in _PROMPT_KEYS:
            if key in value and (found := to_prompt(value[key])) is not None:
                return found
        texts = [v for v in value.values() if isinstance(v, str) and v.strip()]
        return "\n".join(texts) if texts else None
    if isinstance(value, Sequence) and not isinstance(value, bytes) and value:
        try:
            return messages_to_prompt(convert_to_messages(value))
        except (ValueError, TypeError, NotImplementedError):
            return None
    return None


def to_text(value: Any) -> str | None:
    """The answer text in a runnable's output, or None when there is none to check."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseMessage):
        return value.text
    if isinstance(value, dict):
        for key in _OUTPUT_KEYS:
            if isinstance(found := value.get(key), str | BaseMessage):
                return to_text(found)
    return None


def verdict_data(stage: str, verdict: Verdict | ChunkVerdict, *,
                 prompt: Verdict | None = None) -> dict[str, Any]:
    """A verdict as plain data for callbacks and `response_metadata` (never any text).

    `flagged_categories` / `blocked_categories` name what fired at this stage; a one-shot
    check adds its `category_scores`. `prompt`, the request's verdict when an answer's stage is
    reported, adds `prompt_flagged_categories`, `prompt_blocked_categories` and
    `prompt_category_scores`, so one record says what fired on both sides.
    """
    data: dict[str, Any] = {"stage": stage, "label": verdict.label, "score": verdict.score,
                            "threshold": verdict.threshold, "tokens": verdict.tokens,
                            "latency_ms": verdict.latency_ms,
                            "flagged_categories": list(verdict.flagged_categories),
                            "blocked_categories": list(verdict.blocked_categories)}
    if isinstance(verdict, ChunkVerdict):
        data["intercepted"] = verdict.intercepted
        data["intercept_index"] = verdict.intercept_index
    else:
        data["intercepted"] = verdict.unsafe
        data["category_scores"] = dict(verdict.categories)
    if prompt is not None and stage != "input":
        data.update(prompt_categories(prompt))
    return data


def prompt_categories(prompt: Verdict) -> dict[str, Any]:
    """What fired on the request, under `prompt_`-prefixed keys next to an answer's verdict."""
    return {"prompt_flagged_categories": list(prompt.flagged_categories),
            "prompt_blocked_categories": list(prompt.blocked_categories),
            "prompt_category_scores": dict(prompt.categories)}


def _has_extras(chunk: BaseMessageChunk) -> bool:
    return bool(getattr(chunk, "tool_call_chunks", None) or getattr(chunk, "usage_metadata", None)
                or chunk.additional_kwargs or chunk.response_metadata)


class ChunkRelay:
    """Feed upstream chunks (strings or message chunks) to a moderator; emit released ones.

    Released text goes out in the upstream's own shape: a string, or an `AIMessageChunk`
    with the upstream message id. Everything that is not text (tool-call chunks, usage,
    response metadata) is held back and emitted once the stream has ended safely, so a
    tool call cannot run on an answer that is later cut.
    """

    def __init__(self, moderator: StreamModerator, *, as_message: bool | None = None) -> None:
        self.mod = moderator
        self.as_message = as_message
        self.message_id: str | None = None
        self.rest: AIMessageChunk | None = None

    def text_of(self, chunk: object) -> str:
        """The text of one upstream chunk; its non-text parts wait until the stream is cleared."""
        if isinstance(chunk, BaseMessageChunk | BaseMessage):
            if self.as_message is None:
                self.as_message = True
            self.message_id = self.message_id or chunk.id
            if isinstance(chunk, AIMessageChunk) and _has_extras(chunk):
                extra = chunk.model_copy(update={"content": "", "id": None})
                self.rest = extra if self.rest is None else self.rest + extra
            return chunk.text
        if self.as_message is None:
            self.as_message = False
        if chunk is None:
            return ""
        if isinstance(chunk, str):
            return chunk
        raise TypeError(f"cannot moderate a stream of {type(chunk).__name__}")

    def make(self, text: str, *, metadata: dict[str, Any] | None = None) -> Any:
        if not self.as_message:
            return text
        return AIMessageChunk(content=text, id=self.message_id,
                              response_metadata={METADATA_KEY: metadata} if metadata else {})

    def released(self, out: str) -> list[Any]:
        """What one feed cleared, in the upstream's shape (nothing when it cleared nothing)."""
        return [self.make(out)] if out else []

    def push(self, chunk: object) -> list[Any]:
        text = self.text_of(chunk)
        return self.released(self.mod.feed(text) if text else "")

    async def apush(self, chunk: object) -> list[Any]:
        text = self.text_of(chunk)
        return self.released(await self.mod.afeed(text) if text else "")

    def tail(self, out: str) -> list[Any]:
        """What closing the stream cleared, then the held-back extras if the stream was safe."""
        emitted = self.released(out)
        if not self.mod.intercepted and self.as_message and self.rest is not None:
            emitted.append(self.rest.model_copy(update={"id": self.message_id}))
        return emitted

    def finish(self) -> list[Any]:
        return self.tail(self.mod.close())

    async def afinish(self) -> list[Any]:
        return self.tail(await self.mod.aclose())

    def summary(self, prompt: Verdict | None = None) -> dict[str, Any]:
        """What the moderation concluded, for `response_metadata`: the last check, the
        categories that fired over the whole stream, and the request's (`prompt`)."""
        verdict = self.mod.outcome
        if verdict is None:
            data: dict[str, Any] = {"stage": "stream", "intercepted": False, "flagged_categories": [],
                                    "blocked_categories": []}
            return {**data, **prompt_categories(prompt)} if prompt is not None else data
        return verdict_data("stream", verdict, prompt=prompt)
