"""Server spans joined to the caller's W3C trace context, through OpenTelemetry's own FastAPI
instrumentation (optional: the `tracing` extra).

On when `Settings.tracing` is true, or when it is unset and a tracer provider is given or an
SDK tracer provider is configured globally. Spans carry routes, status codes and counts, never
prompt or response text: the instrumentation records no bodies.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI
    from opentelemetry.trace import Span, Tracer, TracerProvider

    from guardrail.server.settings import Settings

log = logging.getLogger("guardrail.server")
UNTRACED_PATHS = "healthz,readyz,metrics"  # probes and scrapes would drown the traces


def _configured(provider: object) -> bool:
    """Whether a tracer provider records anything (the API's default one does not)."""
    try:
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    except ImportError:
        return False
    return isinstance(provider, SdkTracerProvider)


def instrument_app(app: FastAPI, settings: Settings,
                   tracer_provider: TracerProvider | None = None) -> Tracer | None:
    """Instrument the app if tracing is on; returns the tracer for the server's own spans."""
    if settings.tracing is False:
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
    except ImportError:
        if settings.tracing:
            log.warning("tracing is on but OpenTelemetry's FastAPI instrumentation is not installed "
                        "(pip install 'guardrail[tracing]')")
        return None
    provider = tracer_provider or trace.get_tracer_provider()
    if settings.tracing is None and tracer_provider is None and not _configured(provider):
        return None
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=UNTRACED_PATHS,
                                       exclude_spans=["receive", "send"])
    return provider.get_tracer("guardrail.server")


@contextlib.contextmanager
def span(tracer: Tracer | None, name: str, attributes: dict[str, Any]) -> Iterator[Span | None]:
    """A child span of the request's when tracing is on (yielded, for attributes known only at the
    end, such as `guardrail.categories`: names, never text); None otherwise."""
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current
