"""`GuardrailRunnable`: guard any chain or runnable, in a pipe or as a wrapper.

As a wrapper (`GuardrailRunnable.wrap(chain)`) it knows both the request and the answer: the
request is checked before the chain runs, and the chain's streamed output is moderated in a
session that reads the request together with the answer so far.

In a pipe it sees one side only. `chain | GuardrailRunnable()` (stage "output") moderates the
chain's output stream as it flows; `GuardrailRunnable(stage="input") | chain` checks the
request and passes it on unchanged. An output-stage guard judges the answer against the
request in `config["metadata"]["guardrail_prompt"]` when the caller puts it there, else alone;
prefer the wrapper when the request matters to the verdict (it usually does).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForChainRun, CallbackManagerForChainRun
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, Field

from guardrail.errors import GuardrailViolation, Stage
from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.streaming import (
    DEFAULT_REPLACEMENT,
    NO_PROMPT,
    OnViolation,
    PromptLike,
    StreamModerator,
    judge,
)
from guardrail.types import ChunkVerdict, GuardConfig, Verdict
from langchain_guardrail._convert import VERDICT_EVENT, ChunkRelay, to_prompt, to_text, verdict_data
from langchain_guardrail._guards import acheck_prompt, acheck_response, async_guard, sync_guard

PROMPT_METADATA_KEY = "guardrail_prompt"


class GuardrailRunnable(RunnableSerializable[Any, Any]):
    """Check a chain's request and moderate its answer, for invoke/batch/stream and async."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    bound: Runnable[Any, Any] | None = None
    """The guarded runnable (wrapper mode); None in a pipe."""
    guard: GuardProtocol | AsyncGuardProtocol | None = Field(default=None, exclude=True)
    """A `Guard` (embedded or sidecar), sync or async; default: the shared embedded guard."""
    guard_config: GuardConfig | None = None
    stage: Literal["input", "output"] = "output"
    """In a pipe: what this runnable receives, the request or the answer."""
    check_input: bool = True
    check_output: bool = True
    on_violation: OnViolation = "raise"
    replacement: str = DEFAULT_REPLACEMENT
    chunk_chars: int = 0
    prompt_key: str | None = None
    """For dict inputs: the key holding the request (default: messages/input/question/...)."""

    @classmethod
    def wrap(cls, runnable: Runnable[Any, Any], **options: Any) -> GuardrailRunnable:
        """Guard `runnable`: check its input, moderate its output."""
        return cls(bound=runnable, **options)

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return False

    @property
    def InputType(self) -> Any:
        return self.bound.InputType if self.bound is not None else Any

    @property
    def OutputType(self) -> Any:
        return self.bound.OutputType if self.bound is not None else Any

    # -- shared pieces ---------------------------------------------------------------------------
    @property
    def _checks_request(self) -> bool:
        return self.check_input and (self.bound is not None or self.stage == "input")

    @property
    def _checks_answer(self) -> bool:
        return self.check_output and (self.bound is not None or self.stage == "output")

    def _request(self, value: Any, config: RunnableConfig) -> PromptLike | None:
        if self.bound is not None or self.stage == "input":
            return to_prompt(value, self.prompt_key)
        given = (config.get("metadata") or {}).get(PROMPT_METADATA_KEY)
        return to_prompt(given) if given is not None else None

    def _violation(self, stage: Stage, verdict: Verdict | ChunkVerdict, like: Any, released: str = "") -> Any:
        """Raise, or return the replacement in the shape of the value it replaces."""
        if self.on_violation == "raise":
            raise GuardrailViolation(verdict, stage=stage, released=released)
        text = released + self.replacement
        if isinstance(like, BaseMessageChunk):
            return AIMessageChunk(content=text, id=like.id)
        if isinstance(like, BaseMessage):
            return AIMessage(content=text, id=like.id)
        return text

    def _emit(self, stage: str, verdict: Verdict | ChunkVerdict, config: RunnableConfig) -> None:
        with contextlib.suppress(RuntimeError):  # no parent run to attach the event to
            dispatch_custom_event(VERDICT_EVENT, verdict_data(stage, verdict), config=config)

    async def _aemit(self, stage: str, verdict: Verdict | ChunkVerdict, config: RunnableConfig) -> None:
        with contextlib.suppress(RuntimeError):
            await adispatch_custom_event(VERDICT_EVENT, verdict_data(stage, verdict), config=config)

    def _child(self, config: RunnableConfig,
               run_manager: CallbackManagerForChainRun | AsyncCallbackManagerForChainRun) -> RunnableConfig:
        return patch_config(config, callbacks=run_manager.get_child())

    # -- invoke ------------------------------------------------------------------------------------
    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._call_with_config(self._invoke, input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    def _invoke(self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig,
                **kwargs: Any) -> Any:
        guard = sync_guard(self.guard)
        prompt = self._request(value, config)
        if self._checks_request and prompt is not None:
            verdict = judge(guard.check_prompt(prompt), self.guard_config)
            self._emit("input", verdict, config)
            if verdict.unsafe:
                return self._violation("input", verdict, _shape_hint(self.bound, value, chunk=False))
        if self.bound is None and self.stage == "input":
            return value
        output = self.bound.invoke(value, self._child(config, run_manager), **kwargs) \
            if self.bound is not None else value
        text = to_text(output) if self._checks_answer else None
        if text:
            verdict = judge(guard.check_response(prompt if prompt is not None else NO_PROMPT, text),
                            self.guard_config)
            self._emit("output", verdict, config)
            if verdict.unsafe:
                return self._violation("output", verdict, output)
        return output

    async def _ainvoke(self, value: Any, run_manager: AsyncCallbackManagerForChainRun,
                       config: RunnableConfig, **kwargs: Any) -> Any:
        guard = await async_guard(self.guard)
        prompt = self._request(value, config)
        if self._checks_request and prompt is not None:
            verdict = judge(await acheck_prompt(guard, prompt), self.guard_config)
            await self._aemit("input", verdict, config)
            if verdict.unsafe:
                return self._violation("input", verdict, _shape_hint(self.bound, value, chunk=False))
        if self.bound is None and self.stage == "input":
            return value
        output = await self.bound.ainvoke(value, self._child(config, run_manager), **kwargs) \
            if self.bound is not None else value
        text = to_text(output) if self._checks_answer else None
        if text:
            verdict = judge(await acheck_response(guard, prompt if prompt is not None else NO_PROMPT, text),
                            self.guard_config)
            await self._aemit("output", verdict, config)
            if verdict.unsafe:
                return self._violation("output", verdict, output)
        return output

    # -- stream ------------------------------------------------------------------------------------
    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any | None) -> Iterator[Any]:
        yield from self.transform(iter([input]), config, **kwargs)

    async def astream(self, input: Any, config: RunnableConfig | None = None,
                      **kwargs: Any | None) -> AsyncIterator[Any]:
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self.atransform(one(), config, **kwargs):
            yield chunk

    def transform(self, input: Iterator[Any], config: RunnableConfig | None = None,
                  **kwargs: Any | None) -> Iterator[Any]:
        yield from self._transform_stream_with_config(input, self._transform, config, **kwargs)

    async def atransform(self, input: AsyncIterator[Any], config: RunnableConfig | None = None,
                         **kwargs: Any | None) -> AsyncIterator[Any]:
        async for chunk in self._atransform_stream_with_config(input, self._atransform, config, **kwargs):
            yield chunk

    def _transform(self, chunks: Iterator[Any], run_manager: CallbackManagerForChainRun,
                   config: RunnableConfig, **kwargs: Any) -> Iterator[Any]:
        guard = sync_guard(self.guard)
        if self.bound is None and self.stage == "output":  # moderate the piped-in stream itself
            upstream: Iterator[Any] = chunks
            value: Any = None
        else:
            value = _gather(chunks)
        prompt = self._request(value, config)
        mod = StreamModerator(guard, prompt if prompt is not None else NO_PROMPT,
                              config=self.guard_config, chunk_chars=self.chunk_chars) \
            if self._checks_answer else None
        if self._checks_request and prompt is not None:
            verdict = (mod.prompt_verdict if mod else None) or judge(guard.check_prompt(prompt),
                                                                     self.guard_config)
            self._emit("input", verdict, config)
            if verdict.unsafe:
                yield self._violation("input", verdict, _shape_hint(self.bound, value, chunk=True))
                return
        if self.bound is None and self.stage == "input":
            yield value
            return
        if self.bound is not None:
            upstream = self.bound.stream(value, self._child(config, run_manager), **kwargs)
        if mod is None:
            yield from upstream
            return
        relay = ChunkRelay(mod)
        try:
            for chunk in upstream:
                yield from relay.push(chunk)
                if mod.intercepted:
                    break
            else:
                yield from relay.finish()
        finally:
            close = getattr(upstream, "close", None)
            if close is not None:
                close()
            mod.abort()
        if mod.verdict is not None:
            self._emit("stream", mod.verdict, config)
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            yield relay.make(self.replacement)

    async def _atransform(self, chunks: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun,
                          config: RunnableConfig, **kwargs: Any) -> AsyncIterator[Any]:
        guard = await async_guard(self.guard)
        if self.bound is None and self.stage == "output":
            upstream: AsyncIterator[Any] = chunks
            value: Any = None
        else:
            value = await _agather(chunks)
        prompt = self._request(value, config)
        mod = await StreamModerator.acreate(guard, prompt if prompt is not None else NO_PROMPT,
                                            config=self.guard_config, chunk_chars=self.chunk_chars) \
            if self._checks_answer else None
        if self._checks_request and prompt is not None:
            verdict = (mod.prompt_verdict if mod else None) or judge(
                await acheck_prompt(guard, prompt), self.guard_config)
            await self._aemit("input", verdict, config)
            if verdict.unsafe:
                yield self._violation("input", verdict, _shape_hint(self.bound, value, chunk=True))
                return
        if self.bound is None and self.stage == "input":
            yield value
            return
        if self.bound is not None:
            upstream = self.bound.astream(value, self._child(config, run_manager), **kwargs)
        if mod is None:
            async for chunk in upstream:
                yield chunk
            return
        relay = ChunkRelay(mod)
        try:
            async for chunk in upstream:
                for out in await relay.apush(chunk):
                    yield out
                if mod.intercepted:
                    break
            else:
                for out in await relay.afinish():
                    yield out
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:
                await aclose()
            await mod.aabort()
        if mod.verdict is not None:
            await self._aemit("stream", mod.verdict, config)
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            yield relay.make(self.replacement)


def _shape_hint(bound: Runnable[Any, Any] | None, value: Any, *, chunk: bool) -> Any:
    """What a refusal should look like: a message where the runnable returns messages, else text."""
    if bound is None:
        return value
    try:
        returns_message = isinstance(bound.OutputType, type) and issubclass(bound.OutputType, BaseMessage)
    except TypeError:
        returns_message = False
    if not returns_message:
        return ""
    return AIMessageChunk(content="") if chunk else AIMessage(content="")


def _gather(chunks: Iterator[Any]) -> Any:
    """Combine input chunks the way LangChain's default `transform` does."""
    final: Any = None
    for chunk in chunks:
        final = chunk if final is None else final + chunk
    return final


async def _agather(chunks: AsyncIterator[Any]) -> Any:
    final: Any = None
    async for chunk in chunks:
        final = chunk if final is None else final + chunk
    return final


__all__ = ["PROMPT_METADATA_KEY", "GuardrailRunnable"]
