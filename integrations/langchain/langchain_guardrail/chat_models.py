"""`GuardrailChatModel`: any LangChain chat model, with its answers moderated as they stream.

The wrapped model streams into a moderation session; only text a safe check has covered is
emitted, so callbacks, `stream_mode="messages"` and `astream_events` consumers see the guarded
stream, never the raw one. The inner model runs without the caller's callbacks for the same
reason: its raw tokens must not reach any stream handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field

from guardrail.errors import GuardrailViolation, Stage
from guardrail.streaming import (
    DEFAULT_REPLACEMENT,
    NO_PROMPT,
    OnViolation,
    PromptLike,
    StreamModerator,
    acall,
    default_guard,
    judge,
    resolve_guard,
)
from guardrail.types import GuardConfig, Verdict
from langchain_guardrail._convert import METADATA_KEY, ChunkRelay, messages_to_prompt, verdict_data

_INNER_CONFIG: RunnableConfig = {"callbacks": [], "tags": ["nostream"]}
"""The inner model runs detached from the caller's callbacks: its raw stream stays private."""


class GuardrailChatModel(BaseChatModel):
    """Wrap a chat model; its streamed answers are cut where the guard intercepts.

    `GuardrailChatModel(llm=ChatOpenAI(...), guard=Guard())`. On interception the message
    ends with `replacement` (`on_violation="replace"`, the default, as a chat UI wants) or
    the call raises `GuardrailViolation`. `response_metadata["guardrail"]` of the answer
    holds the verdict (never any text).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    llm: Runnable[Any, Any]
    """The wrapped chat model (or a chat model with tools bound)."""
    guard: Any = Field(default=None, exclude=True)
    """A `Guard` (embedded or sidecar); default: the shared embedded guard."""
    guard_config: GuardConfig | None = None
    """Threshold / tau / hold-back for this model's moderation; default: the guard's."""
    check_input: bool = True
    check_output: bool = True
    on_violation: OnViolation = "replace"
    replacement: str = DEFAULT_REPLACEMENT
    chunk_chars: int = 0
    """Coalesce upstream deltas: one check per at least this many characters."""

    @property
    def _llm_type(self) -> str:
        return "guardrail-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        inner = getattr(self.llm, "_identifying_params", {})
        return {"wrapped": getattr(self.llm, "_llm_type", type(self.llm).__name__), **inner}

    # -- tools bind on the inner model, the guard stays outside --------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        inner = self.llm
        if not hasattr(inner, "bind_tools"):
            raise NotImplementedError(f"{type(inner).__name__} does not support tools")
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.model_copy(update={"llm": inner.bind_tools(tools, **kwargs)})

    # -- helpers -------------------------------------------------------------------------------
    def _prompt(self, messages: list[BaseMessage]) -> PromptLike:
        return messages_to_prompt(messages) or NO_PROMPT

    def _refusal(self, stage: Stage, verdict: Verdict, released: str = "") -> AIMessage:
        if self.on_violation == "raise":
            raise GuardrailViolation(verdict, stage=stage, released=released)
        return AIMessage(content=released + self.replacement,
                         response_metadata={METADATA_KEY: verdict_data(stage, verdict)})

    def _check_input(self, guard: Any, prompt: PromptLike, mod: StreamModerator | None) -> Verdict | None:
        if not self.check_input:
            return None
        verdict = (mod.prompt_verdict if mod is not None else None) or judge(
            guard.check_prompt(prompt), self.guard_config)
        return verdict if verdict.unsafe else None

    # -- invoke ----------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        guard = resolve_guard(self.guard)
        prompt = self._prompt(messages)
        if (flagged := self._check_input(guard, prompt, None)) is not None:
            return ChatResult(generations=[ChatGeneration(message=self._refusal("input", flagged))])
        answer = self.llm.invoke(messages, config=_INNER_CONFIG, stop=stop, **kwargs)
        return ChatResult(generations=[ChatGeneration(message=self._judge_answer(
            answer, lambda text: guard.check_response(prompt, text)))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        guard = self.guard if self.guard is not None else await asyncio.to_thread(default_guard)
        prompt = self._prompt(messages)
        if self.check_input:
            verdict = judge(await acall(guard, "check_prompt", prompt), self.guard_config)
            if verdict.unsafe:
                return ChatResult(generations=[ChatGeneration(message=self._refusal("input", verdict))])
        answer = await self.llm.ainvoke(messages, config=_INNER_CONFIG, stop=stop, **kwargs)
        text = answer.text if isinstance(answer, BaseMessage) else ""
        verdict_out = await acall(guard, "check_response", prompt, text) if text and self.check_output \
            else None
        return ChatResult(generations=[ChatGeneration(message=self._judge_answer(
            answer, lambda _text: verdict_out))])

    def _judge_answer(self, answer: Any, check: Callable[[str], Verdict | None]) -> AIMessage:
        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=answer.text if isinstance(answer, BaseMessage) else str(answer))
        text = answer.text
        if not (text and self.check_output):
            return answer
        raw = check(text)
        if raw is None:
            return answer
        verdict = judge(raw, self.guard_config)
        if verdict.unsafe:
            return self._refusal("output", verdict)
        metadata = {**answer.response_metadata, METADATA_KEY: verdict_data("output", verdict)}
        return answer.model_copy(update={"response_metadata": metadata})

    # -- stream ------------------------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        guard = resolve_guard(self.guard)
        prompt = self._prompt(messages)
        if not self.check_output:
            if (flagged := self._check_input(guard, prompt, None)) is not None:
                yield _as_chunk(self._refusal("input", flagged))
                return
            for chunk in self.llm.stream(messages, config=_INNER_CONFIG, stop=stop, **kwargs):
                yield ChatGenerationChunk(message=chunk)
            return
        mod = StreamModerator(guard, prompt, config=self.guard_config, chunk_chars=self.chunk_chars)
        if (flagged := self._check_input(guard, prompt, mod)) is not None:
            yield _as_chunk(self._refusal("input", flagged))
            return
        relay = ChunkRelay(mod, as_message=True)
        upstream = self.llm.stream(messages, config=_INNER_CONFIG, stop=stop, **kwargs)
        try:
            for chunk in upstream:
                for out in relay.push(chunk):
                    yield ChatGenerationChunk(message=out)
                if mod.intercepted:
                    break
            else:
                for out in relay.finish():
                    yield ChatGenerationChunk(message=out)
        finally:
            _close(upstream)
            mod.abort()
        yield self._stream_end(mod, relay)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        guard = self.guard if self.guard is not None else await asyncio.to_thread(default_guard)
        prompt = self._prompt(messages)
        mod = await StreamModerator.acreate(guard, prompt, config=self.guard_config,
                                            chunk_chars=self.chunk_chars)
        if self.check_input:
            verdict = mod.prompt_verdict or judge(await acall(guard, "check_prompt", prompt),
                                                  self.guard_config)
            if verdict.unsafe:
                yield _as_chunk(self._refusal("input", verdict))
                return
        if not self.check_output:
            async for chunk in self.llm.astream(messages, config=_INNER_CONFIG, stop=stop, **kwargs):
                yield ChatGenerationChunk(message=chunk)
            return
        relay = ChunkRelay(mod, as_message=True)
        upstream = self.llm.astream(messages, config=_INNER_CONFIG, stop=stop, **kwargs)
        try:
            async for chunk in upstream:
                for out in await relay.apush(chunk):
                    yield ChatGenerationChunk(message=out)
                if mod.intercepted:
                    break
            else:
                for out in await relay.afinish():
                    yield ChatGenerationChunk(message=out)
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                await aclose()
            await mod.aabort()
        yield self._stream_end(mod, relay)

    def _stream_end(self, mod: StreamModerator, relay: ChunkRelay) -> ChatGenerationChunk:
        """The closing chunk: the verdict summary, plus the replacement after a cut."""
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            return ChatGenerationChunk(message=relay.make(self.replacement, metadata=relay.summary()))
        return ChatGenerationChunk(message=relay.make("", metadata=relay.summary()))


def _as_chunk(message: AIMessage) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=message.content,
                                                      response_metadata=message.response_metadata))


def _close(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        close()


__all__ = ["GuardrailChatModel"]
