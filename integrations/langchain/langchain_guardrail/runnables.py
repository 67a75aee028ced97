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
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import patch_config
from pydantic import ConfigDict, Field

from guardrail.errors import Stage
from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.stream.moderator import violation
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
from langchain_guardrail._guards import AnyGuard, async_guard, sync_guard
from langchain_guardrail._plans import END, AsyncDriver, Op, Plan, SyncDriver

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
            raise violation(verdict, stage, released)
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
        driver = _ChainSync(self, sync_guard(self.guard), config, run_manager, iter(()), kwargs)
        return driver.run(self._invoke_plan(value, config))

    async def _ainvoke(self, value: Any, run_manager: AsyncCallbackManagerForChainRun,
                       config: RunnableConfig, **kwargs: Any) -> Any:
        driver = _ChainAsync(self, await async_guard(self.guard), config, run_manager, _empty(), kwargs)
        return await driver.run(self._invoke_plan(value, config))

    # -- one plan per call shape, for sync and async ------------------------------------------------
    def _request_gate(self, prompt: PromptLike | None, mod: StreamModerator | None) -> Plan[Verdict | None]:
        """The request's verdict (emitted), when this runnable checks it."""
        if not (self._checks_request and prompt is not None):
            return None
        verdict = mod.prompt_verdict if mod is not None else None
        if verdict is None:
            verdict = judge((yield Op("check_prompt", prompt)), self.guard_config)
        yield Op("emit", ("input", verdict))
        return verdict

    def _invoke_plan(self, value: Any, config: RunnableConfig) -> Plan[Any]:
        prompt = self._request(value, config)
        verdict = yield from self._request_gate(prompt, None)
        if verdict is not None and verdict.unsafe:
            return self._violation("input", verdict, _shape_hint(self.bound, value, chunk=False))
        if self.bound is None and self.stage == "input":
            return value
        output = (yield Op("invoke", value)) if self.bound is not None else value
        text = to_text(output) if self._checks_answer else None
        if text:
            request = (prompt if prompt is not None else NO_PROMPT, text)
            verdict = judge((yield Op("check_response", request)), self.guard_config)
            yield Op("emit", ("output", verdict))
            if verdict.unsafe:
                return self._violation("output", verdict, output)
        return output

    def _transform_plan(self, config: RunnableConfig) -> Plan[None]:
        piped = self.bound is None and self.stage == "output"  # moderate the piped-in stream itself
        value = None if piped else (yield Op("gather"))
        prompt = self._request(value, config)
        mod: StreamModerator | None = None
        if self._checks_answer:
            mod = yield Op("open", prompt if prompt is not None else NO_PROMPT)
        verdict = yield from self._request_gate(prompt, mod)
        if verdict is not None and verdict.unsafe:
            yield self._violation("input", verdict, _shape_hint(self.bound, value, chunk=True))
            return
        if self.bound is None and self.stage == "input":
            yield value
            return
        yield Op("stream", _PIPED if piped else value)
        if mod is None:
            while (chunk := (yield Op("next"))) is not END:
                yield chunk
            return
        relay = ChunkRelay(mod)
        while (chunk := (yield Op("next"))) is not END:
            if text := relay.text_of(chunk):
                yield from relay.released((yield Op("feed", text)))
            if mod.intercepted:
                break
        else:
            yield from relay.tail((yield Op("close")))
        yield Op("release")
        if (outcome := mod.outcome) is not None:  # the categories of the whole stream
            yield Op("emit", ("stream", outcome))
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            yield relay.make(self.replacement)

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
        driver = _ChainSync(self, sync_guard(self.guard), config, run_manager, chunks, kwargs)
        yield from driver.iterate(self._transform_plan(config))

    async def _atransform(self, chunks: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun,
                          config: RunnableConfig, **kwargs: Any) -> AsyncIterator[Any]:
        driver = _ChainAsync(self, await async_guard(self.guard), config, run_manager, chunks, kwargs)
        async for out in driver.iterate(self._transform_plan(config)):
            yield out


_PIPED = object()
"""`stream`'s argument when the upstream is the piped-in input itself."""


class _ChainSync(SyncDriver):
    """Runs the guarded runnable as a child of this run; emits verdicts as custom events."""

    def __init__(self, owner: GuardrailRunnable, guard: GuardProtocol, config: RunnableConfig,
                 run_manager: CallbackManagerForChainRun, chunks: Iterator[Any],
                 kwargs: dict[str, Any]) -> None:
        super().__init__(guard, owner.guard_config, owner.chunk_chars)
        self.owner, self.run_config, self.run_manager, self.chunks, self.kwargs = \
            owner, config, run_manager, chunks, kwargs

    def gather(self, _: object) -> object:
        return _gather(self.chunks)

    def invoke(self, value: object) -> object:
        assert self.owner.bound is not None
        child = self.owner._child(self.run_config, self.run_manager)
        return self.owner.bound.invoke(value, child, **self.kwargs)

    def stream(self, value: object) -> None:
        if value is _PIPED:
            self.upstream = self.chunks
            return
        assert self.owner.bound is not None
        child = self.owner._child(self.run_config, self.run_manager)
        self.upstream = iter(self.owner.bound.stream(value, child, **self.kwargs))

    def emit(self, event: tuple[str, Verdict | ChunkVerdict]) -> None:
        self.owner._emit(*event, self.run_config)


class _ChainAsync(AsyncDriver):
    def __init__(self, owner: GuardrailRunnable, guard: AnyGuard, config: RunnableConfig,
                 run_manager: AsyncCallbackManagerForChainRun, chunks: AsyncIterator[Any],
                 kwargs: dict[str, Any]) -> None:
        super().__init__(guard, owner.guard_config, owner.chunk_chars)
        self.owner, self.run_config, self.run_manager, self.chunks, self.kwargs = \
            owner, config, run_manager, chunks, kwargs

    async def gather(self, _: object) -> object:
        return await _agather(self.chunks)

    async def invoke(self, value: object) -> object:
        assert self.owner.bound is not None
        child = self.owner._child(self.run_config, self.run_manager)
        return await self.owner.bound.ainvoke(value, child, **self.kwargs)

    async def stream(self, value: object) -> None:
        if value is _PIPED:
            self.upstream = self.chunks
            return
        assert self.owner.bound is not None
        child = self.owner._child(self.run_config, self.run_manager)
        self.upstream = aiter(self.owner.bound.astream(value, child, **self.kwargs))

    async def emit(self, event: tuple[str, Verdict | ChunkVerdict]) -> None:
        await self.owner._aemit(*event, self.run_config)


async def _empty() -> AsyncIterator[Any]:
    return
    yield


def _shape_hint(bound: Runnable[Any, Any] | None, value: Any, *, chunk: bool) -> Any:
    """What a refusal should look like: a message where the runnable returns messages, else text."""
    if bound is None:
        return value
    inner = bound.bound if isinstance(bound, RunnableBinding) else bound
    try:
        returns_message = isinstance(inner, BaseChatModel) or (
            isinstance(bound.OutputType, type) and issubclass(bound.OutputType, BaseMessage))
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
