"""`GuardrailChatModel`: any LangChain chat model, with its answers moderated as they stream.

The wrapped model streams into a moderation session; only text a safe check has covered is
emitted, so callbacks, `stream_mode="messages"` and `astream_events` consumers see the guarded
stream, never the raw one. The inner model runs without the caller's callbacks for the same
reason: its raw tokens must not reach any stream handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool
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
from guardrail.types import GuardConfig, Verdict
from langchain_guardrail._convert import METADATA_KEY, ChunkRelay, messages_to_prompt, verdict_data
from langchain_guardrail._guards import AnyGuard, acheck_prompt, acheck_response, async_guard, sync_guard

_INNER_CONFIG: RunnableConfig = {"callbacks": [], "tags": ["nostream"]}
"""The inner model runs detached from the caller's callbacks: its raw stream stays private."""


@contextlib.contextmanager
def _detached() -> Iterator[None]:
    """Keep context-wide handlers (`get_usage_metadata_callback`, tracing contexts) off the
    inner run too: the guarded run reports the answer and its usage once, and the raw stream
    reaches no handler. LangChain keeps these handlers in context variables it registers
    through `register_configure_hook`; they are unset here for the duration of one call."""
    try:
        from langchain_core.tracers.context import _configure_hooks
    except ImportError:  # a LangChain without the registry: nothing to detach from
        yield
        return
    tokens = [(var, var.set(None)) for var, *_ in _configure_hooks]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


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
    guard: GuardProtocol | AsyncGuardProtocol | None = Field(default=None, exclude=True)
    """A `Guard` (embedded or sidecar), sync or async; default: the shared embedded guard."""
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

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """The wrapped model's provider and name: traces and cost tracking name the model that ran."""
        inner, bound = _inner_chat_model(self.llm)
        if inner is not None:
            params = inner._get_ls_params(stop=stop, **{**bound, **kwargs})
        else:
            params = super()._get_ls_params(stop=stop, **kwargs)
            params["ls_provider"] = "guardrail"
            params["ls_model_name"] = str(getattr(self.llm, "_llm_type", type(self.llm).__name__))
        params["ls_model_type"] = "chat"
        if kwargs.get("model"):
            params["ls_model_name"] = str(kwargs["model"])
        return params

    # -- helpers -------------------------------------------------------------------------------
    def _prompt(self, messages: list[BaseMessage]) -> PromptLike:
        return messages_to_prompt(messages) or NO_PROMPT

    def _refusal(self, stage: Stage, verdict: Verdict, released: str = "",
                 answer: BaseMessage | None = None) -> AIMessage:
        if self.on_violation == "raise":
            raise GuardrailViolation(verdict, stage=stage, released=released)
        metadata: dict[str, Any] = {METADATA_KEY: verdict_data(stage, verdict)}
        usage = getattr(answer, "usage_metadata", None) if answer is not None else None
        if answer is not None and "model_name" in answer.response_metadata:
            metadata["model_name"] = answer.response_metadata["model_name"]  # what ran, and was paid for
        return AIMessage(content=released + self.replacement, response_metadata=metadata,
                         usage_metadata=usage)

    # -- one plan for sync and async: the drivers below only perform its operations -------------
    def _input_gate(self, prompt: PromptLike, mod: StreamModerator | None) -> Plan[Verdict | None]:
        """The request's verdict when it is flagged (a session's own prompt check counts)."""
        if not self.check_input:
            return None
        verdict = mod.prompt_verdict if mod is not None else None
        if verdict is None:
            verdict = judge((yield _Op("check_prompt", prompt)), self.guard_config)
        return verdict if verdict.unsafe else None

    def _invoke_plan(self, messages: list[BaseMessage]) -> Plan[AIMessage]:
        prompt = self._prompt(messages)
        if (flagged := (yield from self._input_gate(prompt, None))) is not None:
            return self._refusal("input", flagged)
        answer = yield _Op("invoke", messages)
        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=answer.text if isinstance(answer, BaseMessage) else str(answer))
        if not (answer.text and self.check_output):
            return answer
        verdict = judge((yield _Op("check_response", (prompt, answer.text))), self.guard_config)
        if verdict.unsafe:
            return self._refusal("output", verdict, answer=answer)
        metadata = {**answer.response_metadata, METADATA_KEY: verdict_data("output", verdict)}
        return answer.model_copy(update={"response_metadata": metadata})

    def _stream_plan(self, messages: list[BaseMessage]) -> Plan[None]:
        """Released chunks, in order; a moderation session only where the output is checked."""
        prompt = self._prompt(messages)
        mod: StreamModerator | None = (yield _Op("open", prompt)) if self.check_output else None
        if (flagged := (yield from self._input_gate(prompt, mod))) is not None:
            yield _as_chunk(self._refusal("input", flagged))
            return
        yield _Op("stream", messages)
        if mod is None:
            while (chunk := (yield _Op("next"))) is not _END:
                yield ChatGenerationChunk(message=chunk)
            return
        relay = ChunkRelay(mod, as_message=True)
        while (chunk := (yield _Op("next"))) is not _END:
            if text := relay.text_of(chunk):
                for out in relay.released((yield _Op("feed", text))):
                    yield ChatGenerationChunk(message=out)
            if mod.intercepted:
                break
        else:
            for out in relay.tail((yield _Op("close"))):
                yield ChatGenerationChunk(message=out)
        yield _Op("release")  # upstream closed, session freed, before the closing chunk goes out
        yield self._stream_end(mod, relay)

    def _stream_end(self, mod: StreamModerator, relay: ChunkRelay) -> ChatGenerationChunk:
        """The closing chunk: the verdict summary, plus the replacement after a cut."""
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            return ChatGenerationChunk(message=relay.make(self.replacement, metadata=relay.summary()))
        return ChatGenerationChunk(message=relay.make("", metadata=relay.summary()))

    # -- invoke ----------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        io = _SyncIO(self, sync_guard(self.guard), stop, kwargs)
        plan = self._invoke_plan(messages)
        try:
            op = next(plan)
            while True:
                op = plan.send(io.perform(op))
        except StopIteration as done:
            return ChatResult(generations=[ChatGeneration(message=done.value)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        io = _AsyncIO(self, await async_guard(self.guard), stop, kwargs)
        plan = self._invoke_plan(messages)
        try:
            op = next(plan)
            while True:
                op = plan.send(await io.perform(op))
        except StopIteration as done:
            return ChatResult(generations=[ChatGeneration(message=done.value)])

    # -- stream ------------------------------------------------------------------------------------
    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        io = _SyncIO(self, sync_guard(self.guard), stop, kwargs)
        plan = self._stream_plan(messages)
        try:
            step = next(plan, None)
            while step is not None:
                if isinstance(step, ChatGenerationChunk):
                    yield step
                    step = next(plan, None)
                else:
                    step = plan.send(io.perform(step))
        except StopIteration:
            pass
        finally:
            plan.close()
            io.release()

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        io = _AsyncIO(self, await async_guard(self.guard), stop, kwargs)
        plan = self._stream_plan(messages)
        try:
            step = next(plan, None)
            while step is not None:
                if isinstance(step, ChatGenerationChunk):
                    yield step
                    step = next(plan, None)
                else:
                    step = plan.send(await io.perform(step))
        except StopIteration:
            pass
        finally:
            plan.close()
            await io.release()


_END = object()
"""What `next` answers once the upstream stream has ended."""

OpKind = Literal["check_prompt", "check_response", "open", "invoke", "stream", "next", "feed", "close",
                 "release"]


@dataclass(frozen=True)
class _Op:
    """One operation a plan needs done; a driver performs it, sync or async, and sends the result."""

    kind: OpKind
    arg: Any = None


T = TypeVar("T")
Plan = Generator[Any, Any, T]
"""A sans-IO plan: yields `_Op`s (answered by the driver) and chunks (passed to the consumer)."""


class _SyncIO:
    """Performs a plan's operations with blocking calls."""

    def __init__(self, model: GuardrailChatModel, guard: GuardProtocol, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> None:
        self.model, self.guard, self.stop, self.kwargs = model, guard, stop, kwargs
        self.mod: StreamModerator | None = None
        self.upstream: Iterator[BaseMessageChunk] | None = None

    def perform(self, op: _Op) -> Any:
        m = self.model
        if op.kind == "check_prompt":
            return self.guard.check_prompt(op.arg)
        if op.kind == "check_response":
            return self.guard.check_response(*op.arg)
        if op.kind == "open":
            self.mod = StreamModerator(self.guard, op.arg, config=m.guard_config, chunk_chars=m.chunk_chars)
            return self.mod
        if op.kind == "invoke":
            with _detached():
                return m.llm.invoke(op.arg, config=_INNER_CONFIG, stop=self.stop, **self.kwargs)
        if op.kind == "stream":
            self.upstream = iter(m.llm.stream(op.arg, config=_INNER_CONFIG, stop=self.stop, **self.kwargs))
            return None
        if op.kind == "next":
            assert self.upstream is not None
            with _detached():
                return next(self.upstream, _END)
        assert self.mod is not None
        if op.kind == "feed":
            return self.mod.feed(op.arg)
        if op.kind == "close":
            return self.mod.close()
        return self.release()

    def release(self) -> None:
        """Close the upstream and free the session (a no-op for a session that ended normally)."""
        upstream, self.upstream = self.upstream, None
        close = getattr(upstream, "close", None)
        if close is not None:
            close()
        if self.mod is not None:
            self.mod.abort()


class _AsyncIO:
    """Performs the same operations with awaits; sync guards run in a worker thread."""

    def __init__(self, model: GuardrailChatModel, guard: AnyGuard, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> None:
        self.model, self.guard, self.stop, self.kwargs = model, guard, stop, kwargs
        self.mod: StreamModerator | None = None
        self.upstream: AsyncIterator[BaseMessageChunk] | None = None

    async def perform(self, op: _Op) -> Any:
        m = self.model
        if op.kind == "check_prompt":
            return await acheck_prompt(self.guard, op.arg)
        if op.kind == "check_response":
            return await acheck_response(self.guard, *op.arg)
        if op.kind == "open":
            self.mod = await StreamModerator.acreate(self.guard, op.arg, config=m.guard_config,
                                                     chunk_chars=m.chunk_chars)
            return self.mod
        if op.kind == "invoke":
            with _detached():
                return await m.llm.ainvoke(op.arg, config=_INNER_CONFIG, stop=self.stop, **self.kwargs)
        if op.kind == "stream":
            self.upstream = aiter(m.llm.astream(op.arg, config=_INNER_CONFIG, stop=self.stop, **self.kwargs))
            return None
        if op.kind == "next":
            assert self.upstream is not None
            with _detached():
                return await anext(self.upstream, _END)
        assert self.mod is not None
        if op.kind == "feed":
            return await self.mod.afeed(op.arg)
        if op.kind == "close":
            return await self.mod.aclose()
        return await self.release()

    async def release(self) -> None:
        upstream, self.upstream = self.upstream, None
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()
        if self.mod is not None:
            await self.mod.aabort()


def _inner_chat_model(llm: Runnable[Any, Any]) -> tuple[BaseChatModel | None, dict[str, Any]]:
    """The chat model inside `llm` (through `bind`/`bind_tools` bindings) and the bound kwargs."""
    bound: dict[str, Any] = {}
    while isinstance(llm, RunnableBinding):
        bound = {**llm.kwargs, **bound}
        llm = llm.bound
    return (llm, bound) if isinstance(llm, BaseChatModel) else (None, bound)


def _as_chunk(message: AIMessage) -> ChatGenerationChunk:
    return ChatGenerationChunk(message=AIMessageChunk(content=message.content,
                                                      response_metadata=message.response_metadata,
                                                      usage_metadata=message.usage_metadata))


__all__ = ["GuardrailChatModel"]
