"""OpenTelemetry spans and metrics for guard checks, moderation sessions and generations.

`instrument(guard)` returns a guard with the same methods that records:

- a span per check (`guardrail.check_prompt`, `guardrail.check_response`),
- a span per moderation session (`guardrail.session`) with a child span per chunk
  (`guardrail.session.chunk`) and an event at the interception,
- a span per guarded generation (`guardrail.generate`) with an event at the interception,
- metrics: `guardrail.checks` and `guardrail.intercepts` counters and a
  `guardrail.check.duration` histogram (ms).

Attributes carry score, label, threshold, strategy, latency, tokens checked, the token index
of a cut and the model; never the prompt or the response, unless `capture_content=True`
(or `GUARDRAIL_TRACE_CONTENT=1`). OpenTelemetry is optional: without `opentelemetry-api`
everything here is a pass-through.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from guardrail.types import (
    ChunkVerdict,
    DoneEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    Verdict,
)

INSTRUMENTATION_NAME = "guardrail"
SYSTEM = "guardrail"

try:  # the API only; an SDK (or none) is the application's choice
    from opentelemetry import metrics as _otel_metrics
    from opentelemetry import trace as _otel_trace
    from opentelemetry.trace import Status, StatusCode
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    _otel_trace = None  # type: ignore[assignment]
    _otel_metrics = None  # type: ignore[assignment]


def otel_available() -> bool:
    return _otel_trace is not None


def _content_opt_in(flag: bool | None) -> bool:
    if flag is not None:
        return flag
    return os.environ.get("GUARDRAIL_TRACE_CONTENT", "").lower() in ("1", "true", "yes")


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt or []:
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", "")
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", "")
        parts.append(f"{role}: {content}")
    return "\n".join(parts)


class _Telemetry:
    """Tracer and instruments, created once per instrumented guard."""

    def __init__(self, tracer_provider: Any | None, meter_provider: Any | None) -> None:
        assert _otel_trace is not None and _otel_metrics is not None
        self.tracer = _otel_trace.get_tracer(INSTRUMENTATION_NAME, tracer_provider=tracer_provider)
        meter = _otel_metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=meter_provider)
        self.checks = meter.create_counter("guardrail.checks", unit="{check}",
                                           description="Safety checks run.")
        self.intercepts = meter.create_counter("guardrail.intercepts", unit="{intercept}",
                                               description="Times the guard acted.")
        self.duration = meter.create_histogram("guardrail.check.duration", unit="ms",
                                               description="Latency of one safety check.")

    def record_check(self, operation: str, verdict: Verdict | ChunkVerdict) -> None:
        attrs = {"guardrail.operation": operation, "guardrail.label": verdict.label}
        self.checks.add(1, attrs)
        self.duration.record(verdict.latency_ms, attrs)

    def record_intercept(self, operation: str, stage: str) -> None:
        self.intercepts.add(1, {"guardrail.operation": operation, "guardrail.stage": stage})


def verdict_attributes(verdict: Verdict | ChunkVerdict) -> dict[str, Any]:
    attrs: dict[str, Any] = {
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
    return attrs


class InstrumentedSession:
    """A moderation session that records a span for its life and one per chunk."""

    def __init__(self, inner: Any, telemetry: _Telemetry, base: dict[str, Any], span: Any,
                 capture_content: bool, action: str) -> None:
        self._inner = inner
        self._t = telemetry
        self._base = base
        self._span = span
        self._capture = capture_content
        self._action = action
        self._chunks = 0
        self._ended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def _record(self, kind: str, call: Any, chunk: str | bytes | None) -> ChunkVerdict:
        ctx = _otel_trace.set_span_in_context(self._span)  # type: ignore[union-attr]
        with self._t.tracer.start_as_current_span(f"guardrail.session.{kind}", context=ctx,
                                                  attributes=self._base) as span:
            try:
                verdict: ChunkVerdict = call()
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attributes(verdict_attributes(verdict))
            span.set_attribute("guardrail.chunk_index", self._chunks)
            if self._capture:
                if chunk is not None:
                    span.set_attribute("guardrail.chunk", chunk if isinstance(chunk, str)
                                       else chunk.decode("utf-8", "replace"))
                span.set_attribute("guardrail.released", verdict.released)
        self._chunks += 1
        self._t.record_check("session", verdict)
        if verdict.intercepted:
            self._t.record_intercept("session", "stream")
            self._span.add_event("guardrail.intercept", {
                "guardrail.token_index": verdict.intercept_index or 0,
                "guardrail.score": float(verdict.score), "guardrail.action": self._action,
            })
        if verdict.intercepted or kind == "close":
            self._end(verdict)
        return verdict

    def _end(self, verdict: ChunkVerdict) -> None:
        if self._ended:
            return
        self._ended = True
        self._span.set_attributes({**verdict_attributes(verdict), "guardrail.chunks": self._chunks})
        self._span.end()

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        return self._record("chunk", lambda: self._inner.feed(chunk), chunk)

    def close(self) -> ChunkVerdict:
        return self._record("close", self._inner.close, None)

    def __del__(self) -> None:  # an abandoned stream still ends its span
        if not getattr(self, "_ended", True):
            self._ended = True
            self._span.end()


class InstrumentedGuard:
    """The same methods as the wrapped guard, each one traced."""

    def __init__(self, guard: Any, *, capture_content: bool | None = None,
                 tracer_provider: Any | None = None, meter_provider: Any | None = None) -> None:
        self._inner = guard
        self._capture = _content_opt_in(capture_content)
        self._t = _Telemetry(tracer_provider, meter_provider)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def inner(self) -> Any:
        return self._inner

    def _base(self, config: GuardConfig | None = None) -> dict[str, Any]:
        cfg = config or getattr(self._inner, "config", None)
        attrs: dict[str, Any] = {"gen_ai.system": SYSTEM}
        model = getattr(getattr(self._inner, "model", None), "name", None)
        if isinstance(model, str):
            attrs["gen_ai.request.model"] = model
        if isinstance(cfg, GuardConfig):
            attrs.update({"guardrail.strategy": cfg.strategy, "guardrail.threshold": cfg.threshold,
                          "guardrail.tau": cfg.tau, "guardrail.hold_back": cfg.hold_back})
        return attrs

    def _check(self, operation: str, call: Any, prompt: Any, response: str | None) -> Verdict:
        with self._t.tracer.start_as_current_span(f"guardrail.{operation}",
                                                  attributes=self._base()) as span:
            if self._capture:
                span.set_attribute("guardrail.prompt", _prompt_text(prompt))
                if response is not None:
                    span.set_attribute("guardrail.response", response)
            verdict: Verdict = call()
            span.set_attributes(verdict_attributes(verdict))
        self._t.record_check(operation, verdict)
        return verdict

    def check_prompt(self, prompt: Any) -> Verdict:
        return self._check("check_prompt", lambda: self._inner.check_prompt(prompt), prompt, None)

    def check_response(self, prompt: Any, response: str) -> Verdict:
        return self._check("check_response", lambda: self._inner.check_response(prompt, response),
                           prompt, response)

    def session(self, prompt: Any, *, config: GuardConfig | None = None) -> InstrumentedSession:
        cfg = config or getattr(self._inner, "config", None)
        base = self._base(config)
        span = self._t.tracer.start_span("guardrail.session", attributes=base)
        if self._capture:
            span.set_attribute("guardrail.prompt", _prompt_text(prompt))
        ctx = _otel_trace.set_span_in_context(span)  # type: ignore[union-attr]
        token = _otel_trace_context_attach(ctx)
        try:
            inner = self._inner.session(prompt, config=config)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            span.end()
            raise
        finally:
            _otel_trace_context_detach(token)
        prompt_verdict = getattr(inner, "prompt_verdict", None)
        if isinstance(prompt_verdict, Verdict):
            span.set_attribute("guardrail.prompt_score", float(prompt_verdict.score))
        action = cfg.action if isinstance(cfg, GuardConfig) else "refuse"
        return InstrumentedSession(inner, self._t, base, span, self._capture, action)

    def generate(self, prompt: Any, **kwargs: Any) -> Iterator[Any]:
        config = kwargs.get("config")
        attrs = {**self._base(config), "gen_ai.operation.name": "chat"}
        if "max_new_tokens" in kwargs:
            attrs["gen_ai.request.max_tokens"] = kwargs["max_new_tokens"]
        with self._t.tracer.start_as_current_span("guardrail.generate", attributes=attrs) as span:
            if self._capture:
                span.set_attribute("guardrail.prompt", _prompt_text(prompt))
            started = time.perf_counter()
            checks = 0
            for event in self._inner.generate(prompt, **kwargs):
                if isinstance(event, ScoreEvent):
                    checks += 1
                    span.set_attribute("guardrail.score", float(event.score))
                elif isinstance(event, InterceptEvent):
                    self._t.record_intercept("generate", event.stage)
                    span.add_event("guardrail.intercept", {
                        "guardrail.token_index": event.index, "guardrail.score": float(event.score),
                        "guardrail.action": event.action, "guardrail.stage": event.stage,
                    })
                elif isinstance(event, DoneEvent):
                    span.set_attributes({
                        "guardrail.intercepted": event.intercepted,
                        "guardrail.checks": event.usage.checks or checks,
                        "gen_ai.usage.input_tokens": event.usage.prompt_tokens,
                        "gen_ai.usage.output_tokens": event.usage.completion_tokens,
                        "guardrail.latency_ms": event.timings.total_ms
                        or (time.perf_counter() - started) * 1000,
                    })
                    if event.intercept_index is not None:
                        span.set_attribute("guardrail.token_index", event.intercept_index)
                    if self._capture:
                        span.set_attribute("guardrail.response", event.text)
                yield event

    def generate_text(self, prompt: Any, **kwargs: Any) -> GenerationResult:
        """Run the traced `generate` to the end (the span covers the whole generation)."""
        score: float | None = None
        done: DoneEvent | None = None
        for event in self.generate(prompt, **kwargs):
            if isinstance(event, ScoreEvent | InterceptEvent):
                score = event.score
            elif isinstance(event, DoneEvent):
                done = event
        if done is None:
            raise RuntimeError("generation ended without a done event")
        return GenerationResult(text=done.text, intercepted=done.intercepted,
                                intercept_index=done.intercept_index, score=score, usage=done.usage,
                                timings=done.timings)


def _otel_trace_context_attach(ctx: Any) -> Any:
    from opentelemetry import context

    return context.attach(ctx)


def _otel_trace_context_detach(token: Any) -> None:
    from opentelemetry import context

    context.detach(token)


def instrument(guard: Any, *, capture_content: bool | None = None, tracer_provider: Any | None = None,
               meter_provider: Any | None = None) -> Any:
    """Trace this guard's checks, sessions and generations; the guard itself when OTel is absent.

    The result has the same methods, so it can be passed wherever a guard goes
    (`guarded(guard=...)`, `moderate(..., guard=...)`, the LangChain integration).
    """
    if not otel_available():
        return guard
    if isinstance(guard, InstrumentedGuard):
        return guard
    return InstrumentedGuard(guard, capture_content=capture_content, tracer_provider=tracer_provider,
                             meter_provider=meter_provider)


__all__ = ["InstrumentedGuard", "InstrumentedSession", "instrument", "otel_available", "verdict_attributes"]
