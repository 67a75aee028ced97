"""Instrumentation of async guards and sessions, and W3C trace context across the HTTP hop.

A loopback sidecar records the headers of every request it gets: every request of a traced
operation must carry the caller's trace id, sync or async, checks, sessions and generations.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guardrail import GuardConfig
from guardrail.client import AsyncGuardrailClient, GuardrailClient
from guardrail.errors import GuardrailViolation
from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.server import Settings, create_app
from guardrail.streaming import moderate
from guardrail.tracing import AsyncInstrumentedGuard, InstrumentedGuard, instrument
from guardrail.types import ChunkVerdict, DoneEvent, GenerationResult, Verdict
from tests.conformance.keyword import make_keyword_model
from tests.test_server_support import ServerThread

SECRET = "zq-secret-request"


class HeaderRecorder:
    """ASGI middleware keeping (path, headers) of every HTTP request."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, dict[str, str]]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            self.seen.append((scope["path"], headers))
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def sidecar(tokenizer: Any) -> Iterator[tuple[str, HeaderRecorder]]:
    recorder = HeaderRecorder(create_app(Settings(), make_keyword_model(tokenizer)))
    with ServerThread(recorder) as server:
        yield server.url, recorder


@pytest.fixture()
def tracing() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _trace_ids(recorder: HeaderRecorder, start: int) -> list[str | None]:
    """The trace id each request since `start` carried (None: no traceparent)."""
    ids: list[str | None] = []
    for _path, headers in recorder.seen[start:]:
        parent = headers.get("traceparent")
        ids.append(parent.split("-")[1] if parent else None)
    return ids


def test_sync_client_requests_carry_the_callers_trace(sidecar: tuple[str, HeaderRecorder],
                                                       tracing: tuple[TracerProvider, Any]) -> None:
    url, recorder = sidecar
    provider, exporter = tracing
    guard = instrument(GuardrailClient(url, config=GuardConfig(tau=1)), tracer_provider=provider)
    assert isinstance(guard, InstrumentedGuard) and isinstance(guard, GuardProtocol)
    start = len(recorder.seen)
    with provider.get_tracer("app").start_as_current_span("request") as root:
        guard.check_prompt(SECRET)
        guard.check_response(SECRET, "a calm answer")
        session = guard.session(SECRET)
        session.feed("It was a calm ")
        session.close()
        result = guard.generate_text("hi", max_new_tokens=3)
    assert isinstance(result, GenerationResult)
    trace_id = format(root.get_span_context().trace_id, "032x")
    ids = _trace_ids(recorder, start)
    assert len(ids) >= 6 and ids == [trace_id] * len(ids)
    # the guard's own spans are children of the app's span, and hold no text
    spans = exporter.get_finished_spans()
    assert {s.context.trace_id for s in spans} == {root.get_span_context().trace_id}
    assert all(SECRET not in str(dict(s.attributes or {})) for s in spans)


def test_plain_client_propagates_without_instrument(sidecar: tuple[str, HeaderRecorder],
                                                    tracing: tuple[TracerProvider, Any]) -> None:
    url, recorder = sidecar
    provider, _ = tracing
    client = GuardrailClient(url)
    start = len(recorder.seen)
    with provider.get_tracer("app").start_as_current_span("request") as root:
        client.check_prompt("hello")
        list(client.generate("hi", max_new_tokens=2))
    assert _trace_ids(recorder, start) == [format(root.get_span_context().trace_id, "032x")] * 2
    start = len(recorder.seen)
    client.check_prompt("no span here")
    assert _trace_ids(recorder, start) == [None]  # no current span: nothing invented
    client.close()


def test_async_instrumented_guard_and_session(sidecar: tuple[str, HeaderRecorder],
                                              tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    url, recorder = sidecar
    provider, exporter = tracing

    async def main() -> str:
        client = AsyncGuardrailClient(url, config=GuardConfig(tau=1))
        guard = instrument(client, tracer_provider=provider)
        assert isinstance(guard, AsyncInstrumentedGuard) and isinstance(guard, AsyncGuardProtocol)
        with provider.get_tracer("app").start_as_current_span("request") as root:
            verdict = await guard.check_prompt(SECRET)
            assert type(verdict) is Verdict
            session = await guard.session("story")
            first = await session.feed("Once upon a time ")
            last = await session.close()
            assert isinstance(first, ChunkVerdict) and isinstance(last, ChunkVerdict)
            events = [e async for e in guard.generate("hi", max_new_tokens=3)]
            assert isinstance(events[-1], DoneEvent)
            result = await guard.generate_text("hi", max_new_tokens=3)
            assert result.text == events[-1].text
            shown = [t async for t in moderate(_agen(["A calm ", "day."]), prompt="story", guard=guard)]
            assert "".join(shown) == "A calm day."
            with pytest.raises(GuardrailViolation):
                cut = _agen(["Then ", "a bomb ", "went off."])
                async for _ in moderate(cut, prompt="story", guard=guard):
                    pass
        await guard.close()
        return format(root.get_span_context().trace_id, "032x")

    start = len(recorder.seen)
    trace_id = asyncio.run(main())
    ids = _trace_ids(recorder, start)
    assert len(ids) >= 10 and ids == [trace_id] * len(ids)
    spans = exporter.get_finished_spans()
    operations = [dict(s.attributes or {}).get("gen_ai.operation.name") for s in spans]
    assert operations.count("guardrail.session") == 3
    assert "guardrail.check_prompt" in operations and "chat" in operations
    session_spans = [s for s in exporter.get_finished_spans()
                     if dict(s.attributes or {}).get("gen_ai.operation.name") == "guardrail.session"]
    assert any(e.name == "guardrail.intercept" for s in session_spans for e in s.events)


def test_span_names_units_and_provider(sidecar: tuple[str, HeaderRecorder],
                                       tracing: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader


    url, _recorder = sidecar
    provider, exporter = tracing
    reader = InMemoryMetricReader()
    client = GuardrailClient(url)
    meters = MeterProvider(metric_readers=[reader])
    guard = instrument(client, tracer_provider=provider, meter_provider=meters)
    guard.check_prompt("hello")
    client.effective_config()  # learns the served model's name from /readyz
    guard.check_prompt("hello")
    first, span = exporter.get_finished_spans()
    assert first.name == "guardrail.check_prompt"  # the model is not known yet
    assert span.name == "guardrail.check_prompt tiny"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.provider.name"] == "guardrail" and "gen_ai.system" not in attrs
    assert attrs["gen_ai.operation.name"] == "guardrail.check_prompt"
    assert attrs["gen_ai.request.model"] == "tiny"
    units = {m.name: m.unit for rm in reader.get_metrics_data().resource_metrics
             for sm in rm.scope_metrics for m in sm.metrics}
    assert units["guardrail.check.duration"] == "s" and units["gen_ai.client.operation.duration"] == "s"


async def _agen(pieces: list[str]) -> Any:
    for piece in pieces:
        yield piece
