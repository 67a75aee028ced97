"""OpenTelemetry spans and metrics for guard checks, moderation sessions and generations.

`instrument(guard)` returns a guard with the same methods (sync or async, as the guard is)
that records, following the GenAI semantic conventions:

- a span per check, named `{gen_ai.operation.name} {gen_ai.request.model}`, with operations
  `guardrail.check_prompt`, `guardrail.check_response` (and `guardrail.check_prompts`,
  `guardrail.check_responses` for batches, `guardrail.moderations` for the OpenAI-shaped call),
- a span per moderation session (`guardrail.session`) with a child span per chunk
  (`guardrail.session.chunk`, `guardrail.session.close`) and an event at the interception,
- a span per guarded generation (operation `chat`) with an event at the interception,
- metrics: `guardrail.checks` and `guardrail.intercepts` counters, the
  `guardrail.check.duration` histogram and `gen_ai.client.operation.duration`, in seconds.

Every span has `gen_ai.provider.name` = "guardrail" and `gen_ai.operation.name`; attributes
carry score, label, threshold, strategy, latency, tokens checked, the token index of a cut and
`guardrail.categories` (the names of the categories that fired, on checks, moderations, session
chunks, sessions and generations); never the prompt or the response, unless
`capture_content=True` (or `GUARDRAIL_TRACE_CONTENT=1`).
The sidecar clients inject the span's W3C trace context into their requests, so server spans
join the caller's trace. OpenTelemetry is optional: without `opentelemetry-api` everything here
is a pass-through.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, overload

from guardrail.events import ResultCollector
from guardrail.moderation import ModerationInput, ModerationResponse, fired_categories
from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol, SessionProtocol
from guardrail.stream.bridge import AnyGuard, is_async_guard
from guardrail.types import (
    ChunkVerdict,
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    PromptInput,
    ScoreEvent,
    Verdict,
)

CATEGORIES = "guardrail.categories"
"""The span attribute naming the categories that fired: names only, never text."""

INSTRUMENTATION_NAME = "guardrail"
PROVIDER = "guardrail"
SYSTEM = PROVIDER  # the old name of the provider constant
Attributes = dict[str, Any]

try:  # the API only; an SDK (or none) is the application's choice
    from opentelemetry import context as _otel_context
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace import Span, Status, StatusCode
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    _otel_trace = None  # type: ignore[assignment]
    _otel_metrics = None  # type: ignore[assignment]


def otel_available() -> bool:
    return _otel_trace is not None


def _content_opt_in(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("GUARDRAIL_TRACE_CONTENT", "").lower() in ("1", "true", "yes")


def _prompt_text(prompt: PromptInput) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", "")
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
        parts.append(f"{role}: {content}")
    return "\n".join(parts)


def verdict_attributes(verdict: Verdict | ChunkVerdict) -> Attributes:
    attrs: Attributes = {
        "guardrail.score": float(verdict.score),
        "guardrail.label": verdict.label,
        "guardrail.threshold": float(verdict.threshold),
        "guardrail.latency_ms": float(verdict.latency_ms),
        "guardrail.tokens": int(verdict.tokens),
    }
    if isinstance(verdict, ChunkVerdict):
        attrs["guardrail.intercepted"] = verdict.intercepted
        if verdict.intercept_index is not None:
            attrs["guardrail.token_index"] = verdict.intercept_index
    else:
        attrs["guardrail.intercepted"] = False
    attrs.update(categories_attributes(verdict.flagged_categories))
    return attrs


def categories_attributes(names: Sequence[str]) -> Attributes:
    """`guardrail.categories` when any category fired (absent otherwise): names, never text."""
    return {CATEGORIES: tuple(dict.fromkeys(names))} if names else {}


def _model_name(guard: object) -> str | None:
    """The model behind a guard, where it says (`model_name`; a sidecar client once it knows)."""
    name = getattr(guard, "model_name", None)
    if not isinstance(name, str):
        with contextlib.suppress(AttributeError):
            name = getattr(getattr(guard, "model", None), "name", None)
    return name if isinstance(name, str) and name else None


class _Result:
    """What a traced call produced, set inside the span's `with` block."""

    verdict: Verdict | ChunkVerdict | None = None
    verdicts: Sequence[Verdict] = ()
    moderation: ModerationResponse | None = None


class _Telemetry:
    """Tracer, instruments and the span steps every wrapper shares (sync or async alike)."""

    def __init__(self, guard: object, tracer_provider: Any | None, meter_provider: Any | None,
                 capture_content: bool) -> None:
        assert _otel_trace is not None and _otel_metrics is not None
        self.guard = guard
        self.capture = capture_content
        self.tracer = _otel_trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        meter = _otel_metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self.checks = meter.create_counter("guardrail.checks", unit="{check}",
                                           description="Safety checks run.")
        self.intercepts = meter.create_counter("guardrail.intercepts", unit="{intercept}",
                                               description="Times the guard acted.")
        self.duration = meter.create_histogram("guardrail.check.duration", unit="s",
                                               description="Latency of one safety check.")
        self.operation_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration.")

    # -- attributes -----------------------------------------------------------------------------
    def model(self) -> str | None:
        return _model_name(self.guard)

    def base(self, operation: str, config: GuardConfig | None = None) -> Attributes:
        cfg = config or getattr(self.guard, "config", None)
        attrs: Attributes = {"gen_ai.provider.name": PROVIDER, "gen_ai.operation.name": operation}
        if (model := self.model()) is not None:
            attrs["gen_ai.request.model"] = model
        if isinstance(cfg, GuardConfig):
            attrs.update({"guardrail.strategy": cfg.strategy, "guardrail.threshold": cfg.threshold,
                          "guardrail.tau": cfg.tau, "guardrail.hold_back": cfg.hold_back})
        return attrs

    def span_name(self, operation: str) -> str:
        model = self.model()
        return f"{operation} {model}" if model else operation

    def record_check(self, operation: str, verdict: Verdict | ChunkVerdict) -> None:
        attrs = {"gen_ai.operation.name": operation, "guardrail.label": verdict.label}
        self.checks.add(1, attrs)
        self.duration.record(verdict.latency_ms / 1000, attrs)

    def record_intercept(self, operation: str, stage: str) -> None:
        self.intercepts.add(1, {"gen_ai.operation.name": operation, "guardrail.stage": stage})

    def record_operation(self, attrs: Mapping[str, Any], started: float, error: BaseException | None) -> None:
        labels = {k: attrs[k] for k in ("gen_ai.operation.name", "gen_ai.provider.name",
                                        "gen_ai.request.model") if k in attrs}
        if error is not None:
            labels["error.type"] = type(error).__name__
        self.operation_duration.record(time.perf_counter() - started, labels)

    # -- spans ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def checking(self, operation: str, prompt: PromptInput | None, response: str | None,
                 **extra: Any) -> Iterator[_Result]:
        """A check's span: the caller sets `result.verdict` (or `.verdicts` for a batch) inside."""
        attrs = {**self.base(operation), **extra}
        started = time.perf_counter()
        result = _Result()
        error: BaseException | None = None
        with self.tracer.start_as_current_span(self.span_name(operation), attributes=attrs) as span:
            if self.capture and prompt is not None:
                span.set_attribute("guardrail.prompt", _prompt_text(prompt))
                if response is not None:
                    span.set_attribute("guardrail.response", response)
            try:
                yield result
            except BaseException as exc:
                error = exc
                span.set_attribute("error.type", type(exc).__name__)
                raise
            finally:
                self.record_operation(attrs, started, error)
            if result.verdict is not None:
                span.set_attributes(verdict_attributes(result.verdict))
                self.record_check(operation, result.verdict)
            for verdict in result.verdicts:
                self.record_check(operation, verdict)
            if result.verdicts:
                span.set_attribute("guardrail.batch_size", len(result.verdicts))
                span.set_attribute("guardrail.flagged", sum(v.unsafe for v in result.verdicts))
            if result.moderation is not None:
                self.see_moderation(span, operation, result.moderation)

    def see_moderation(self, span: Span, operation: str, response: ModerationResponse) -> None:
        """A moderations call's span: how many inputs, how many flagged, which categories fired."""
        flagged = sum(r.flagged for r in response.results)
        span.set_attributes({"guardrail.batch_size": len(response.results), "guardrail.flagged": flagged,
                             **categories_attributes(fired_categories(response))})
        for moderated in response.results:
            self.checks.add(1, {"gen_ai.operation.name": operation,
                                "guardrail.label": "unsafe" if moderated.flagged else "safe"})

    def open_session(self, prompt: PromptInput, config: GuardConfig | None) -> tuple[Span, Attributes]:
        base = self.base("guardrail.session", config)
        span = self.tracer.start_span(self.span_name("guardrail.session"), attributes=base)
        if self.capture:
            span.set_attribute("guardrail.prompt", _prompt_text(prompt))
        return span, base

    @contextlib.contextmanager
    def opening(self, span: Span) -> Iterator[None]:
        """The inner session is created under the session's span (its requests carry it)."""
        assert _otel_trace is not None
        token = _otel_context.attach(_otel_trace.set_span_in_context(span))
        try:
            yield
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        finally:
            _otel_context.detach(token)

    def generation(self, prompt: PromptInput, kwargs: Mapping[str, Any]) -> _GenerationTrace:
        return _GenerationTrace(self, prompt, kwargs)


class _GenerationTrace:
    """One generation's span; `see` is the step each event goes through (sync or async loop)."""

    def __init__(self, t: _Telemetry, prompt: PromptInput, kwargs: Mapping[str, Any]) -> None:
        self.t = t
        self.attrs = {**t.base("chat", kwargs.get("config")), "gen_ai.output.type": "text"}
        if "max_new_tokens" in kwargs:
            self.attrs["gen_ai.request.max_tokens"] = kwargs["max_new_tokens"]
        self.prompt = prompt
        self.checks = 0
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def span(self) -> Iterator[Span]:
        error: BaseException | None = None
        with self.t.tracer.start_as_current_span(self.t.span_name("chat"), attributes=self.attrs) as span:
            if self.t.capture:
                span.set_attribute("guardrail.prompt", _prompt_text(self.prompt))
            try:
                yield span
            except BaseException as exc:
                error = exc
                raise
            finally:
                self.t.record_operation(self.attrs, self.started, error)

    def see(self, span: Span, event: GenerationEvent) -> None:
        if isinstance(event, ScoreEvent):
            self.checks += 1
            span.set_attribute("guardrail.score", float(event.score))
        elif isinstance(event, InterceptEvent):
            self.t.record_intercept("chat", event.stage)
            span.add_event("guardrail.intercept", {
                "guardrail.token_index": event.index, "guardrail.score": float(event.score),
                "guardrail.action": event.action, "guardrail.stage": event.stage,
                **categories_attributes(event.flagged_categories),
            })
        elif isinstance(event, DoneEvent):
            span.set_attributes({
                "guardrail.intercepted": event.intercepted,
                "guardrail.checks": event.usage.checks or self.checks,
                "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                "gen_ai.response.finish_reasons": ["content_filter" if event.intercepted else "stop"],
                "guardrail.latency_ms": event.timings.total_ms or (time.perf_counter() - self.started) * 1000,
            })
            if event.intercept_index is not None:
                span.set_attribute("guardrail.token_index", event.intercept_index)
            span.set_attributes(categories_attributes(event.flagged_categories))
            if self.t.capture:
                span.set_attribute("guardrail.response", event.text)


class _SessionTrace:
    """The steps both instrumented sessions share: a child span per chunk, the intercept event,
    and ending the session's span once (at the close, the cut, or when abandoned)."""

    def __init__(self, t: _Telemetry, span: Span, base: Attributes, action: str) -> None:
        self.t = t
        self.span = span
        self.base = base
        self.action = action
        self.chunks = 0
        self.ended = False
        self.categories: dict[str, None] = {}  # fired at any chunk, in first-seen order

    @contextlib.contextmanager
    def chunk(self, kind: str, chunk: str | bytes | None) -> Iterator[_Result]:
        assert _otel_trace is not None
        ctx = _otel_trace.set_span_in_context(self.span)
        operation = f"guardrail.session.{kind}"
        result = _Result()
        with self.t.tracer.start_as_current_span(self.t.span_name(operation), context=ctx,
                                                 attributes={**self.base, "gen_ai.operation.name": operation},
                                                 ) as span:
            try:
                yield result
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            verdict = result.verdict
            assert isinstance(verdict, ChunkVerdict)
            span.set_attributes(verdict_attributes(verdict))
            span.set_attribute("guardrail.chunk_index", self.chunks)
            if self.t.capture:
                if chunk is not None:
                    span.set_attribute("guardrail.chunk", chunk if isinstance(chunk, str)
                                       else chunk.decode("utf-8", "replace"))
                span.set_attribute("guardrail.released", verdict.released)
        self.chunks += 1
        self.categories.update(dict.fromkeys(verdict.flagged_categories))
        self.t.record_check("guardrail.session", verdict)
        if verdict.intercepted:
            self.t.record_intercept("guardrail.session", "stream")
            self.span.add_event("guardrail.intercept", {
                "guardrail.token_index": verdict.intercept_index or 0,
                "guardrail.score": float(verdict.score), "guardrail.action": self.action,
                **categories_attributes(verdict.flagged_categories),
            })
        if verdict.intercepted or kind == "close":
            self.end(verdict)

    def end(self, verdict: ChunkVerdict | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        if verdict is not None:
            self.span.set_attributes({**verdict_attributes(verdict), "guardrail.chunks": self.chunks})
        # the session's span names every category fired at any of its chunks
        self.span.set_attributes(categories_attributes(list(self.categories)))
        self.span.end()


def _action(guard: object, config: GuardConfig | None) -> str:
    cfg = config or getattr(guard, "config", None)
    return cfg.action if isinstance(cfg, GuardConfig) else "refuse"


# -- sync -----------------------------------------------------------------------------------------
class InstrumentedSession:
    """A moderation session that records a span for its life and one per chunk."""

    def __init__(self, inner: SessionProtocol, trace: _SessionTrace) -> None:
        self._inner = inner
        self._trace = trace
        self.prompt_verdict: Verdict | None = inner.prompt_verdict

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        with self._trace.chunk("chunk", chunk) as result:
            result.verdict = verdict = self._inner.feed(chunk)
        return verdict

    def close(self) -> ChunkVerdict:
        with self._trace.chunk("close", None) as result:
            result.verdict = verdict = self._inner.close()
        return verdict

    def __del__(self) -> None:  # an abandoned stream still ends its span
        trace = self.__dict__.get("_trace")
        if trace is not None:
            trace.end()


class InstrumentedGuard:
    """The same methods as the wrapped guard, each one traced."""

    def __init__(self, guard: GuardProtocol, *, capture_content: bool | None = None,
                 tracer_provider: Any | None = None, meter_provider: Any | None = None) -> None:
        self._inner = guard
        self._t = _Telemetry(guard, tracer_provider, meter_provider, _content_opt_in(capture_content))

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    @property
    def inner(self) -> GuardProtocol:
        return self._inner

    def check_prompt(self, prompt: PromptInput) -> Verdict:
        with self._t.checking("guardrail.check_prompt", prompt, None) as result:
            result.verdict = verdict = self._inner.check_prompt(prompt)
        return verdict

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        with self._t.checking("guardrail.check_response", prompt, response) as result:
            result.verdict = verdict = self._inner.check_response(prompt, response)
        return verdict

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        with self._t.checking("guardrail.check_prompts", None, None) as result:
            result.verdicts = verdicts = self._inner.check_prompts(prompts)
        return verdicts

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        with self._t.checking("guardrail.check_responses", None, None) as result:
            result.verdicts = verdicts = self._inner.check_responses(pairs)
        return verdicts

    def moderations(self, input: ModerationInput, *, config: GuardConfig | None = None) -> ModerationResponse:
        with self._t.checking("guardrail.moderations", None, None) as result:
            result.moderation = moderated = self._inner.moderations(input, config=config)
        return moderated

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> InstrumentedSession:
        span, base = self._t.open_session(prompt, config)
        with self._t.opening(span):
            inner = self._inner.session(prompt, config=config)
        _prompt_score(span, inner.prompt_verdict)
        return InstrumentedSession(inner, _SessionTrace(self._t, span, base, _action(self._inner, config)))

    def generate(self, prompt: PromptInput, **kwargs: Any) -> Iterator[GenerationEvent]:
        trace = self._t.generation(prompt, kwargs)
        with trace.span() as span:
            for event in self._inner.generate(prompt, **kwargs):
                trace.see(span, event)
                yield event

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run the traced `generate` to the end (the span covers the whole generation)."""
        collector = ResultCollector()
        for event in self.generate(prompt, **kwargs):
            collector.add(event)
        return collector.result()

    def close(self) -> None:
        self._inner.close()


# -- async ----------------------------------------------------------------------------------------
class AsyncInstrumentedSession:
    """The async twin of `InstrumentedSession` (same span steps)."""

    def __init__(self, inner: AsyncSessionProtocol, trace: _SessionTrace) -> None:
        self._inner = inner
        self._trace = trace
        self.prompt_verdict: Verdict | None = inner.prompt_verdict

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    async def feed(self, chunk: str | bytes) -> ChunkVerdict:
        with self._trace.chunk("chunk", chunk) as result:
            result.verdict = verdict = await self._inner.feed(chunk)
        return verdict

    async def close(self) -> ChunkVerdict:
        with self._trace.chunk("close", None) as result:
            result.verdict = verdict = await self._inner.close()
        return verdict

    def __del__(self) -> None:
        trace = self.__dict__.get("_trace")
        if trace is not None:
            trace.end()


class AsyncInstrumentedGuard:
    """The async twin of `InstrumentedGuard`: wraps an async guard, awaits it, same spans."""

    def __init__(self, guard: AsyncGuardProtocol, *, capture_content: bool | None = None,
                 tracer_provider: Any | None = None, meter_provider: Any | None = None) -> None:
        self._inner = guard
        self._t = _Telemetry(guard, tracer_provider, meter_provider, _content_opt_in(capture_content))

    if not TYPE_CHECKING:
        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

    @property
    def inner(self) -> AsyncGuardProtocol:
        return self._inner

    async def check_prompt(self, prompt: PromptInput) -> Verdict:
        with self._t.checking("guardrail.check_prompt", prompt, None) as result:
            result.verdict = verdict = await self._inner.check_prompt(prompt)
        return verdict

    async def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        with self._t.checking("guardrail.check_response", prompt, response) as result:
            result.verdict = verdict = await self._inner.check_response(prompt, response)
        return verdict

    async def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        with self._t.checking("guardrail.check_prompts", None, None) as result:
            result.verdicts = verdicts = await self._inner.check_prompts(prompts)
        return verdicts

    async def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        with self._t.checking("guardrail.check_responses", None, None) as result:
            result.verdicts = verdicts = await self._inner.check_responses(pairs)
        return verdicts

    async def moderations(self, input: ModerationInput, *,
                          config: GuardConfig | None = None) -> ModerationResponse:
        with self._t.checking("guardrail.moderations", None, None) as result:
            result.moderation = moderated = await self._inner.moderations(input, config=config)
        return moderated

    async def session(self, prompt: PromptInput, *,
                      config: GuardConfig | None = None) -> AsyncInstrumentedSession:
        span, base = self._t.open_session(prompt, config)
        with self._t.opening(span):
            inner = await self._inner.session(prompt, config=config)
        _prompt_score(span, inner.prompt_verdict)
        trace = _SessionTrace(self._t, span, base, _action(self._inner, config))
        return AsyncInstrumentedSession(inner, trace)

    async def generate(self, prompt: PromptInput, **kwargs: Any) -> AsyncIterator[GenerationEvent]:
        trace = self._t.generation(prompt, kwargs)
        with trace.span() as span:
            async for event in self._inner.generate(prompt, **kwargs):
                trace.see(span, event)
                yield event

    async def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        collector = ResultCollector()
        async for event in self.generate(prompt, **kwargs):
            collector.add(event)
        return collector.result()

    async def close(self) -> None:
        await self._inner.close()


def _prompt_score(span: Span, verdict: Verdict | None) -> None:
    if isinstance(verdict, Verdict):
        span.set_attribute("guardrail.prompt_score", float(verdict.score))


@overload
def instrument(guard: AsyncGuardProtocol, *, capture_content: bool | None = None,
               tracer_provider: Any | None = None,
               meter_provider: Any | None = None) -> AsyncGuardProtocol: ...


@overload
def instrument(guard: GuardProtocol, *, capture_content: bool | None = None,
               tracer_provider: Any | None = None, meter_provider: Any | None = None) -> GuardProtocol: ...


def instrument(guard: AnyGuard, *, capture_content: bool | None = None, tracer_provider: Any | None = None,
               meter_provider: Any | None = None) -> AnyGuard:
    """Trace this guard's checks, sessions and generations; the guard itself when OTel is absent.

    A sync guard gives a sync wrapper, an async one (`AsyncGuardrailClient`) an async wrapper;
    either has the same methods, so it goes wherever the guard goes (`guarded(guard=...)`,
    `moderate(..., guard=...)`, the LangChain integration).
    """
    if not otel_available() or isinstance(guard, InstrumentedGuard | AsyncInstrumentedGuard):
        return guard
    options: dict[str, Any] = {"capture_content": capture_content, "tracer_provider": tracer_provider,
                               "meter_provider": meter_provider}
    if is_async_guard(guard):
        return AsyncInstrumentedGuard(guard, **options)
    return InstrumentedGuard(guard, **options)


__all__ = [
    "AsyncInstrumentedGuard",
    "AsyncInstrumentedSession",
    "InstrumentedGuard",
    "InstrumentedSession",
    "categories_attributes",
    "instrument",
    "otel_available",
    "verdict_attributes",
]
