"""Server spans join the caller's W3C trace context; no prompt text in them (real uvicorn,
in-memory span exporter)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("opentelemetry.instrumentation.fastapi")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guardrail.server import Settings, create_app
from tests.test_server_support import ServerThread, make_model

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
SENTINEL = "zq7SENTINELxv"


@pytest.fixture(scope="module")
def traced(tokenizer: Any) -> Iterator[tuple[httpx.Client, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(), make_model(tokenizer), tracer_provider=provider)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, exporter


def test_server_span_joins_the_callers_trace(traced: tuple[httpx.Client, InMemorySpanExporter]) -> None:
    http, exporter = traced
    exporter.clear()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=1"}
    body = {"batch": [{"prompt": f"before {SENTINEL} after"}, {"prompt": "hi", "response": SENTINEL}]}
    assert http.post("/v1/check", json=body, headers=headers).status_code == 200
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server, [s.name for s in spans]
    (request_span,) = server
    assert format(request_span.context.trace_id, "032x") == TRACE_ID
    assert request_span.parent is not None and format(request_span.parent.span_id, "016x") == PARENT_ID
    assert "/v1/check" in request_span.name
    own = request_span.context.span_id
    children = {s.name: s for s in spans if s.parent is not None and s.parent.span_id == own}
    assert "guardrail.check" in children
    assert children["guardrail.check"].attributes["guardrail.items"] == 2
    for s in spans:
        values = [s.name, *dict(s.attributes or {}).values()]
        values += [v for e in s.events for v in (e.name, *dict(e.attributes or {}).values())]
        assert not any(SENTINEL in str(v) for v in values), s.name


def test_sessions_and_probes(traced: tuple[httpx.Client, InMemorySpanExporter]) -> None:
    http, exporter = traced
    exporter.clear()
    headers = {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"}
    sid = http.post("/v1/sessions", json={"prompt": SENTINEL}, headers=headers).json()["id"]
    http.post(f"/v1/sessions/{sid}/chunks", json={"text": SENTINEL + " "}, headers=headers)
    http.get("/healthz", headers=headers)
    http.get("/metrics", headers=headers)
    spans = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(spans) == 2 and all(format(s.context.trace_id, "032x") == TRACE_ID for s in spans)
    assert any("{session_id}" in s.name for s in spans)  # the template, not the id
    for s in spans:
        assert not any(SENTINEL in str(v) for v in (s.name, *dict(s.attributes or {}).values()))


def test_no_spans_without_tracing(tokenizer: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(Settings(tracing=False), make_model(tokenizer), tracer_provider=provider)
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        c.post("/v1/check", json={"prompt": "hi"}, headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert exporter.get_finished_spans() == ()
