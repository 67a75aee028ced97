"""`ChatGuardrail`: the guard's own guarded generation as a LangChain chat model.

Where `GuardrailChatModel` moderates another model's stream, `ChatGuardrail` *is* the model:
each call runs the safety-augmented model's guarded decoding (`Guard.generate`, embedded or on
a `guardrail serve` sidecar), so every token it emits has already been covered by a safe check.
The last chunk carries the outcome in `response_metadata["guardrail"]` (and `generation_info`):
on an interception the cut's token index, score and action, and the categories that fired on
the answer (`flagged_categories`) and on the request (`prompt_flagged_categories`,
`prompt_category_scores`), never any text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.language_models.chat_models import agenerate_from_stream, generate_from_stream
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from pydantic import AliasChoices, ConfigDict, Field

from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.streaming import PromptLike
from guardrail.types import DoneEvent, GenerationEvent, GuardConfig, InterceptEvent, ScoreEvent, TokenEvent
from langchain_guardrail._convert import METADATA_KEY, messages_to_prompt
from langchain_guardrail._guards import AnyGuard, is_async_guard, sync_guard

DEFAULT_MODEL_NAME = "guardrail"
"""The id a `guardrail serve` sidecar reports for its model unless told otherwise."""
LS_PROVIDER = "guardrail"


class ChatGuardrail(BaseChatModel):
    """The hosted safety-augmented model as a chat model: `prompt | ChatGuardrail() | parser`.

    `guard` is a `Guard` (`Guard()` in process, `Guard(backend="http://127.0.0.1:8000")` for a
    sidecar) or a `GuardrailClient` / `AsyncGuardrailClient`; without one, the shared embedded
    guard is created on first use. `config` sets threshold / tau / action for this model's
    generations (default: the guard's). `invoke(..., max_new_tokens=..., temperature=...,
    top_p=..., seed=..., config=...)` overrides per call. Stop sequences are applied here, on the
    released text.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    guard: GuardProtocol | AsyncGuardProtocol | None = Field(default=None, exclude=True)
    """A `Guard` or sidecar client; default: the shared embedded guard, created lazily."""
    model_name: str = Field(default=DEFAULT_MODEL_NAME, alias="model")
    """The served model's id, as the sidecar reports it (`guardrail serve --model-name`); it
    names the model in traces and `response_metadata`, it does not choose one."""
    max_new_tokens: int = Field(default=128, ge=1,
                                validation_alias=AliasChoices("max_new_tokens", "max_tokens"))
    """Also accepted as LangChain's standard `max_tokens`."""
    temperature: float = Field(default=0.0, ge=0.0)
    """0 decodes greedily."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    """Makes sampling (temperature > 0) repeatable."""
    stop: list[str] | None = None
    """Default stop sequences; a call's own `stop` replaces them."""
    config: GuardConfig | None = None
    """Guarded-decoding settings for this model; default: the guard's own."""

    @property
    def _llm_type(self) -> str:
        return "guardrail"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": self.seed,
                "config": self.config.model_dump() if self.config is not None else None}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """What LangSmith and other tracers record: provider, model, sampling limits."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = LS_PROVIDER
        params["ls_model_name"] = str(kwargs.get("model") or self.model_name)
        params["ls_max_tokens"] = int(kwargs.get("max_new_tokens") or kwargs.get("max_tokens")
                                      or self.max_new_tokens)
        params["ls_temperature"] = float(kwargs.get("temperature", self.temperature))
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # -- helpers -------------------------------------------------------------------------------
    def _start(self, guard: AnyGuard, messages: list[BaseMessage], stop: list[str] | None,
               kwargs: dict[str, Any]) -> tuple[PromptLike, dict[str, Any], _Outcome]:
        """The prompt and generation arguments for these messages, and the state that turns the
        guard's events into chunks (shared by the sync and async paths)."""
        prompt = messages_to_prompt(messages)
        if prompt is None:
            raise ValueError("ChatGuardrail needs at least one message")
        model = kwargs.pop("model", None)
        if model is not None and model != self.model_name:
            raise ValueError(f"ChatGuardrail generates with the guard's model {self.model_name!r};"
                             f" model={model!r} cannot select another")
        if "max_tokens" in kwargs:
            kwargs.setdefault("max_new_tokens", kwargs.pop("max_tokens"))
        params = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                  "top_p": self.top_p, "seed": self.seed, "config": self.config, **kwargs}
        config = params.get("config") or getattr(guard, "config", None)
        state = _Outcome(config if isinstance(config, GuardConfig) else None,
                         stop if stop is not None else self.stop, params["max_new_tokens"], self.model_name)
        return prompt, params, state

    # -- sync ------------------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        guard = sync_guard(self.guard)
        prompt, params, state = self._start(guard, messages, stop, kwargs)
        events = guard.generate(prompt, **params)
        try:
            for event in events:
                if (released := state.push(event)) is not None:
                    yield released
                if state.stopped:
                    break
        finally:
            close = getattr(events, "close", None)  # a generator; any iterator is accepted
            if close is not None:
                close()
        yield state.final_chunk()

    # -- async -------------------------------------------------------------------------------------
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return await agenerate_from_stream(self._astream(messages, stop=stop, run_manager=run_manager,
                                                         **kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if self.guard is None or not is_async_guard(self.guard):
            # A sync guard (embedded, or the sync sidecar client): run it in a worker thread.
            async for chunk in super()._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
                yield chunk
            return
        guard = cast(AsyncGuardProtocol, self.guard)
        prompt, params, state = self._start(guard, messages, stop, kwargs)
        events = guard.generate(prompt, **params)
        try:
            async for event in events:
                if (released := state.push(event)) is not None:
                    yield released
                if state.stopped:
                    break
        finally:
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()
        yield state.final_chunk()


class _Outcome:
    """Turn generation events into released text and the closing chunk's metadata."""

    def __init__(self, config: GuardConfig | None, stop: list[str] | None, limit: int,
                 model_name: str) -> None:
        self.config = config
        self.model_name = model_name
        self.limit = limit
        self.stops = [s for s in stop or [] if s]
        self.keep = max((len(s) for s in self.stops), default=1) - 1
        self.pending = ""
        self.stopped = False
        self.intercept: InterceptEvent | None = None
        self.done: DoneEvent | None = None
        self.last_score: float | None = None
        self.checks = 0
        self.prompt: ScoreEvent | None = None
        self.fired: dict[str, None] = {}
        self.blocked: dict[str, None] = {}

    def push(self, event: GenerationEvent) -> ChatGenerationChunk | None:
        """Record one event; the chunk of text it releases, if any."""
        if isinstance(event, TokenEvent):
            text = self._release(event.text)
            return ChatGenerationChunk(message=AIMessageChunk(content=text)) if text else None
        if isinstance(event, ScoreEvent):
            self.last_score = event.score
            self.checks += 1
            if self.checks == 1 and event.index == 0:
                self.prompt = event  # the prompt check rides in the prompt's pass, before any token
            else:
                self.fired.update(dict.fromkeys(event.flagged_categories))
                self.blocked.update(dict.fromkeys(event.blocked_categories))
        elif isinstance(event, InterceptEvent):
            self.intercept = event
            if event.stage == "response":
                self.fired.update(dict.fromkeys(event.flagged_categories))
        elif isinstance(event, DoneEvent):
            self.done = event
        return None

    def _release(self, text: str) -> str:
        """Text up to a stop sequence; the last few characters wait in case one spans chunks."""
        if not self.stops or self.stopped:
            return "" if self.stopped else text
        self.pending += text
        cuts = [i for s in self.stops if (i := self.pending.find(s)) >= 0]
        if cuts:
            out, self.pending, self.stopped = self.pending[: min(cuts)], "", True
            return out
        n = len(self.pending) - self.keep
        if n <= 0:
            return ""
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def categories(self) -> dict[str, Any]:
        """What fired: on the answer's checks (at the cut included) and on the request."""
        prompt = self.prompt
        data: dict[str, Any] = {"flagged_categories": list(self.fired),
                                "blocked_categories": list(self.blocked)}
        if prompt is not None:
            data.update(prompt_flagged_categories=list(prompt.flagged_categories),
                        prompt_blocked_categories=list(prompt.blocked_categories),
                        prompt_category_scores=dict(prompt.categories))
        if self.intercept is not None and self.intercept.stage == "prompt":
            data["flagged_categories"] = list(self.intercept.flagged_categories or
                                              data.get("prompt_flagged_categories", []))
            data["blocked_categories"] = list(data.get("prompt_blocked_categories", []))
        return data

    def metadata(self) -> dict[str, Any]:
        threshold = self.config.threshold if self.config is not None else None
        if self.intercept is not None:
            return {"intercepted": True, "stage": "input" if self.intercept.stage == "prompt" else "stream",
                    "label": "unsafe", "index": self.intercept.index, "score": self.intercept.score,
                    "action": self.intercept.action, "threshold": threshold, "checks": self.checks,
                    **self.categories()}
        return {"intercepted": False, "stage": "stream", "label": "safe", "score": self.last_score,
                "threshold": threshold, "checks": self.checks, **self.categories()}

    def final_chunk(self) -> ChatGenerationChunk:
        tail = self.pending
        self.pending = ""
        if self.intercept is not None:
            finish = "content_filter"
        elif self.stopped or self.done is None:
            finish = "stop"
        else:
            finish = "length" if self.done.usage.completion_tokens >= self.limit else "stop"
        info = {METADATA_KEY: self.metadata(), "finish_reason": finish, "model_name": self.model_name}
        usage: UsageMetadata | None = None
        if self.done is not None:
            u = self.done.usage
            usage = UsageMetadata(input_tokens=u.prompt_tokens, output_tokens=u.completion_tokens,
                                  total_tokens=u.prompt_tokens + u.completion_tokens)
        message = AIMessageChunk(content=tail, response_metadata=dict(info), usage_metadata=usage,
                                 chunk_position="last")
        return ChatGenerationChunk(message=message, generation_info=dict(info))


__all__ = ["ChatGuardrail"]
