"""OpenTelemetry: spans per check, session chunk and generation; no text unless opted in."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guardrail import Guard, GuardConfig
from guardrail.decorators import guarded
from guardrail.errors import GuardrailViolation
from guardrail.streaming import moderate
from guardrail.tracing import InstrumentedGuard, instrument
from tests.oracle import assert_released_before_the_cut, keyword_model, text_upto, words_of
from tests.test_server_support import SAFE_PART, SCRIPT

SECRET = "my-secret-request-text"


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, operation: str | None = None) -> list[Any]:
        """Finished spans, optionally of one `gen_ai.operation.name` (span names add the model)."""
        return [s for s in self.exporter.get_finished_spans()
                if operation is None or (s.attributes or {}).get("gen_ai.operation.name") == operation]

    def metric_sum(self, name: str) -> float:
        data = self.reader.get_metrics_data()
        total = 0.0
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            total += getattr(point, "value", None) or getattr(point, "count", 0)
        return total


@pytest.fixture()
def telemetry() -> Iterator[Telemetry]:
    t = Telemetry()
    yield t
    t.tracer_provider.shutdown()


def traced(guard: Guard, t: Telemetry, config: GuardConfig, **kw: Any) -> Any:
    base = Guard(safety_model=guard.model, config=config)
    return instrument(base, tracer_provider=t.tracer_provider, meter_provider=t.meter_provider, **kw)


def test_check_span_has_verdict_attributes_and_no_text(guard: Guard, telemetry: Telemetry) -> None:
    g = traced(guard, telemetry, GuardConfig(threshold=1.0))
    assert isinstance(g, InstrumentedGuard)
    verdict = g.check_prompt(SECRET)
    g.check_response(SECRET, "an answer")
    (span,) = telemetry.spans("guardrail.check_prompt")
    attrs = dict(span.attributes)
    assert attrs["guardrail.score"] == pytest.approx(verdict.score)
    assert attrs["guardrail.label"] == "safe"
    assert attrs["guardrail.threshold"] == 1.0
    assert attrs["guardrail.latency_ms"] > 0
    assert attrs["guardrail.strategy"] == "periodic"
    assert attrs["gen_ai.provider.name"] == "guardrail" and "gen_ai.system" not in attrs
    assert span.name == f"guardrail.check_prompt {guard.model.name}"
    assert len(telemetry.spans("guardrail.check_response")) == 1
    for s in telemetry.spans():
        assert not any(SECRET in str(v) or "an answer" in str(v) for v in s.attributes.values())
    assert telemetry.metric_sum("guardrail.checks") == 2
    assert telemetry.metric_sum("guardrail.check.duration") == 2  # histogram count


def test_content_is_recorded_only_when_opted_in(guard: Guard, telemetry: Telemetry) -> None:
    g = traced(guard, telemetry, GuardConfig(threshold=1.0), capture_content=True)
    g.check_prompt(SECRET)
    (span,) = telemetry.spans("guardrail.check_prompt")
    assert span.attributes["guardrail.prompt"] == SECRET


def test_session_spans_and_intercept_event(guard: Guard, telemetry: Telemetry) -> None:
    g = traced(guard, telemetry, GuardConfig(threshold=0.0, tau=1, hold_back=0))
    with pytest.raises(GuardrailViolation):
        list(moderate(iter(["First part,", " second part", " third."]), prompt=SECRET, guard=g))
    (session,) = telemetry.spans("guardrail.session")
    chunks = telemetry.spans("guardrail.session.chunk") + telemetry.spans("guardrail.session.close")
    assert chunks and all(c.parent.span_id == session.context.span_id for c in chunks)
    assert session.attributes["guardrail.intercepted"] is True
    (event,) = [e for e in session.events if e.name == "guardrail.intercept"]
    assert event.attributes["guardrail.token_index"] == 0
    assert event.attributes["guardrail.action"] == "refuse"
    assert telemetry.metric_sum("guardrail.intercepts") == 1
    for s in telemetry.spans():
        assert not any(SECRET in str(v) for v in s.attributes.values())


@pytest.mark.parametrize("split", ["fine", "coarse"])
def test_traced_stream_cut_after_safe_chunks(tokenizer: Any, telemetry: Telemetry, split: str) -> None:
    """Safe chunks, then a flagged one, hold-back 2: the traced guard shows only checked text,
    and the span's intercept event names the same cut as the verdict."""
    config = GuardConfig(strategy="each", tau=1, hold_back=2, threshold=0.5)
    g = instrument(Guard(safety_model=keyword_model(tokenizer), config=config),
                   tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider)
    chunks = words_of(SCRIPT) if split == "fine" else [SAFE_PART, SCRIPT[len(SAFE_PART):]]
    shown: list[str] = []
    with pytest.raises(GuardrailViolation) as info:
        for piece in moderate(iter(chunks), prompt=SECRET, guard=g):
            shown.append(piece)
    released = "".join(shown)
    expected = assert_released_before_the_cut(tokenizer, SCRIPT, released, config, exact=split == "fine",
                                              safe_prefix=SAFE_PART)
    index = info.value.verdict.intercept_index
    assert index is not None and text_upto(tokenizer, SCRIPT, index) == released
    if split == "fine":
        assert index == expected.intercept_index
    (session,) = telemetry.spans("guardrail.session")
    assert session.attributes["guardrail.intercepted"] is True
    (event,) = [e for e in session.events if e.name == "guardrail.intercept"]
    assert event.attributes["guardrail.token_index"] == index
    assert telemetry.metric_sum("guardrail.intercepts") == 1
    for s in telemetry.spans():
        assert not any(SECRET in str(v) or "bomb" in str(v) for v in s.attributes.values())


def test_decorated_function_traces_through_instrumented_guard(guard: Guard, telemetry: Telemetry) -> None:
    g = traced(guard, telemetry, GuardConfig(threshold=1.0))

    @guarded(guard=g)
    def answer(question: str) -> str:
        return "Bake it at 220 C."

    answer("bread?")
    names = [s.attributes["gen_ai.operation.name"] for s in telemetry.spans()]
    assert names == ["guardrail.check_prompt", "guardrail.check_response"]


def test_generation_span(guard: Guard, telemetry: Telemetry) -> None:
    g = traced(guard, telemetry, GuardConfig(threshold=1.0, check_prompt=False))
    result = g.generate_text("Say hi.", max_new_tokens=3)
    (span,) = telemetry.spans("chat")
    assert span.name == f"chat {guard.model.name}"
    assert span.attributes["gen_ai.operation.name"] == "chat"
    assert span.attributes["gen_ai.request.max_tokens"] == 3
    assert span.attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    assert span.attributes["guardrail.intercepted"] is False


def test_instrument_is_a_no_op_without_opentelemetry(monkeypatch: pytest.MonkeyPatch, guard: Guard) -> None:
    import guardrail.tracing as tracing

    monkeypatch.setattr(tracing, "_otel_trace", None)
    assert tracing.instrument(guard) is guard
