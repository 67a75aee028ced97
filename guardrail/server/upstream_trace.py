"""Trace context across the proxy's hop to the upstream (W3C `traceparent` / `tracestate`).

Each upstream call gets a client span, a child of the caller's trace: the server span when the
app is instrumented, else the context the client sent in its own headers. The span's context
is injected into the upstream request, so the upstream joins the same trace. OpenTelemetry is
optional: without it this does nothing. No prompt or answer text goes into the span.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    trace = None  # type: ignore[assignment]

TRACE_HEADERS = ("traceparent", "tracestate")


class UpstreamSpan:
    """One client span around an upstream call; `inject` adds its context to request headers."""

    def __init__(self, model: str, incoming: Mapping[str, str], *, operation: str = "chat") -> None:
        self._span: Any = None
        if trace is None:
            return
        context = None
        if not trace.get_current_span().get_span_context().is_valid:  # no server span: use the client's
            context = propagate.extract({k: v for k, v in incoming.items() if k.lower() in TRACE_HEADERS})
        self._span = trace.get_tracer("guardrail.server").start_span(
            f"{operation} {model}".strip(), context=context, kind=SpanKind.CLIENT,
            attributes={"gen_ai.operation.name": operation, "guardrail.proxy": True,
                        **({"gen_ai.request.model": model} if model else {})})

    def inject(self, headers: MutableMapping[str, str]) -> None:
        if self._span is not None:
            propagate.inject(headers, context=trace.set_span_in_context(self._span))

    def end(self, error: str | None = None) -> None:
        """Idempotent; `error` (a short reason, never content) marks the span failed."""
        span, self._span = self._span, None
        if span is None:
            return
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
            span.set_attribute("error.type", error)
        span.end()
