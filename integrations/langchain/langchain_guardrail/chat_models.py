"""`GuardrailChatModel`: any LangChain chat model, with its answers moderated as they stream.

The wrapped model streams into a moderation session; only text a safe check has covered is
emitted, so callbacks, `stream_mode="messages"` and `astream_events` consumers see the guarded
stream, never the raw one. The inner model runs without the caller's callbacks for the same
reason: its raw tokens must not reach any stream handler.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableBinding, RunnableConfig
from langchain_core.tools import BaseTool
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
from guardrail.types import GuardConfig, Verdict
from langchain_guardrail._convert import METADATA_KEY, ChunkRelay, messages_to_prompt, verdict_data
from langchain_guardrail._guards import AnyGuard, async_guard, sync_guard
from langchain_guardrail._plans import END, AsyncDriver, Op, Plan, SyncDriver

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
                 answer: BaseMessage | None = None, prompt: Verdict | None = None) -> AIMessage:
        if self.on_violation == "raise":
            raise violation(verdict, stage, released)
        metadata: dict[str, Any] = {METADATA_KEY: verdict_data(stage, verdict, prompt=prompt)}
        usage = getattr(answer, "usage_metadata", None) if answer is not None else None
        if answer is not None and "model_name" in answer.response_metadata:
            metadata["model_name"] = answer.response_metadata["model_name"]  # what ran, and was paid for
        return AIMessage(content=released + self.replacement, response_metadata=metadata,
                         usage_metadata=usage)

    # -- one plan for sync and async: the drivers below only perform its operations -------------
    def _input_gate(self, prompt: PromptLike, mod: StreamModerator | None) -> Plan[Verdict | None]:
        """The request's verdict, when it is checked (a session's own prompt check counts)."""
        if not self.check_input:
            return None
        verdict = mod.prompt_verdict if mod is not None else None
        if verdict is None:
            verdict = judge((yield Op("check_prompt", prompt)), self.guard_config)
        return verdict

    def _invoke_plan(self, messages: list[BaseMessage]) -> Plan[AIMessage]:
        prompt = self._prompt(messages)
        request = yield from self._input_gate(prompt, None)
        if request is not None and request.unsafe:
            return self._refusal("input", request)
        answer = yield Op("invoke", messages)
        if not isinstance(answer, AIMessage):
            answer = AIMessage(content=answer.text if isinstance(answer, BaseMessage) else str(answer))
        if not (answer.text and self.check_output):
            return answer
        verdict = judge((yield Op("check_response", (prompt, answer.text))), self.guard_config)
        if verdict.unsafe:
            return self._refusal("output", verdict, answer=answer, prompt=request)
        metadata = {**answer.response_metadata, METADATA_KEY: verdict_data("output", verdict, prompt=request)}
        return answer.model_copy(update={"response_metadata": metadata})

    def _stream_plan(self, messages: list[BaseMessage]) -> Plan[None]:
        """Released chunks, in order; a moderation session only where the output is checked."""
        prompt = self._prompt(messages)
        mod: StreamModerator | None = (yield Op("open", prompt)) if self.check_output else None
        request = yield from self._input_gate(prompt, mod)
        if request is not None and request.unsafe:
            yield _as_chunk(self._refusal("input", request))
            return
        yield Op("stream", messages)
        if mod is None:
            while (chunk := (yield Op("next"))) is not END:
                yield ChatGenerationChunk(message=chunk)
            return
        relay = ChunkRelay(mod, as_message=True)
        while (chunk := (yield Op("next"))) is not END:
            if text := relay.text_of(chunk):
                for out in relay.released((yield Op("feed", text))):
                    yield ChatGenerationChunk(message=out)
            if mod.intercepted:
                break
        else:
            for out in relay.tail((yield Op("close"))):
                yield ChatGenerationChunk(message=out)
        yield Op("release")  # upstream closed, session freed, before the closing chunk goes out
        yield self._stream_end(mod, relay, request)

    def _stream_end(self, mod: StreamModerator, relay: ChunkRelay,
                    request: Verdict | None) -> ChatGenerationChunk:
        """The closing chunk: the verdict summary (what fired on both sides), plus the
        replacement after a cut."""
        summary = relay.summary(request)
        if mod.intercepted:
            if self.on_violation == "raise":
                raise mod.violation()
            return ChatGenerationChunk(message=relay.make(self.replacement, metadata=summary))
        return ChatGenerationChunk(message=relay.make("", metadata=summary))

    # -- the two drivers ----------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        answer = _ChatSync(self, sync_guard(self.guard), stop, kwargs).run(self._invoke_plan(messages))
        return ChatResult(generations=[ChatGeneration(message=answer)])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        driver = _ChatAsync(self, await async_guard(self.guard), stop, kwargs)
        answer = await driver.run(self._invoke_plan(messages))
        return ChatResult(generations=[ChatGeneration(message=answer)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from _ChatSync(self, sync_guard(self.guard), stop, kwargs).iterate(self._stream_plan(messages))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        driver = _ChatAsync(self, await async_guard(self.guard), stop, kwargs)
        async for chunk in driver.iterate(self._stream_plan(messages)):
            yield chunk


class _ChatSync(SyncDriver):
    """Runs the wrapped model detached from the caller's callbacks."""

    def __init__(self, model: GuardrailChatModel, guard: GuardProtocol, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> None:
        super().__init__(guard, model.guard_config, model.chunk_chars)
        self.llm, self.stop, self.kwargs = model.llm, stop, kwargs

    def invoke(self, value: object) -> object:
        with _detached():
            return self.llm.invoke(value, config=_INNER_CONFIG, stop=self.stop, **self.kwargs)

    def stream(self, value: object) -> None:
        self.upstream = iter(self.llm.stream(value, config=_INNER_CONFIG, stop=self.stop, **self.kwargs))

    def next(self, _: object) -> object:
        with _detached():
            return super().next(_)


class _ChatAsync(AsyncDriver):
    def __init__(self, model: GuardrailChatModel, guard: AnyGuard, stop: list[str] | None,
                 kwargs: dict[str, Any]) -> None:
        super().__init__(guard, model.guard_config, model.chunk_chars)
        self.llm, self.stop, self.kwargs = model.llm, stop, kwargs

    async def invoke(self, value: object) -> object:
        with _detached():
            return await self.llm.ainvoke(value, config=_INNER_CONFIG, stop=self.stop, **self.kwargs)

    async def stream(self, value: object) -> None:
        self.upstream = aiter(self.llm.astream(value, config=_INNER_CONFIG, stop=self.stop, **self.kwargs))

    async def next(self, _: object) -> object:
        with _detached():
            return await super().next(_)


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
