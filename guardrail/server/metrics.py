"""The sidecar's Prometheus metrics, kept by `prometheus-client` in one registry per app.

The wrappers keep the small interface the server's parts call (`inc(**labels)`,
`observe(value, **labels)`, gauges read at scrape time), so the exposition format, escaping,
OpenMetrics and process metrics come from the library. prometheus-client's metric objects
are thread-safe, so the model worker thread updates them directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

import prometheus_client
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder

T = TypeVar("T")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class _Metric:
    def __init__(self, registry: CollectorRegistry, name: str, labels: Sequence[str]) -> None:
        self.registry = registry
        self.name = name
        self.label_names = tuple(labels)

    def _sample(self, suffix: str, labels: dict[str, str]) -> float:
        value = self.registry.get_sample_value(self.name + suffix, labels or None)
        return float(value or 0.0)


class Counter(_Metric):
    def __init__(self, registry: CollectorRegistry, name: str, help_text: str,
                 labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, labels)
        self._counter = prometheus_client.Counter(name, help_text, self.label_names, registry=registry)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        (self._counter.labels(**labels) if self.label_names else self._counter).inc(amount)

    def value(self, **labels: str) -> float:
        return self._sample("" if self.name.endswith("_total") else "_total", labels)


class Gauge(_Metric):
    """A value set directly, or read from a callback at scrape time (assign `_read`)."""

    def __init__(self, registry: CollectorRegistry, name: str, help_text: str) -> None:
        super().__init__(registry, name, ())
        self._gauge = prometheus_client.Gauge(name, help_text, registry=registry)
        self._reader: Callable[[], float] | None = None

    @property
    def _read(self) -> Callable[[], float] | None:
        return self._reader

    @_read.setter
    def _read(self, read: Callable[[], float] | None) -> None:
        self._reader = read
        if read is not None:
            self._gauge.set_function(lambda: float(read()))

    def set(self, value: float) -> None:
        self._gauge.set(value)

    def add(self, amount: float) -> None:
        self._gauge.inc(amount)

    def value(self) -> float:
        return float(self._reader()) if self._reader is not None else self._sample("", {})


class Histogram(_Metric):
    def __init__(self, registry: CollectorRegistry, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(registry, name, labels)
        self._histogram = prometheus_client.Histogram(name, help_text, self.label_names, registry=registry,
                                                      buckets=tuple(buckets))

    def observe(self, value: float, **labels: str) -> None:
        (self._histogram.labels(**labels) if self.label_names else self._histogram).observe(value)

    def count(self, **labels: str) -> int:
        return int(self._sample("_count", labels))


async def tracked(gauge: Gauge, events: AsyncIterator[T]) -> AsyncIterator[T]:
    """Count a stream while it runs; the count drops however it ends (done, error, hang-up).

    A client that disconnects cancels the response task, which raises inside this
    generator, so a stream that leaks its model state shows up as a gauge that stays up.
    """
    gauge.add(1)
    try:
        async for event in events:
            yield event
    finally:
        gauge.add(-1)
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(BaseException):
                await aclose()


class Metrics:
    """Every metric the sidecar exports, in one registry per app (plus process and platform
    metrics), so two apps in one process never share or clash."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.requests = Counter(r, "guardrail_requests_total", "HTTP requests by route and status.",
                                ("method", "route", "status"))
        self.request_seconds = Histogram(r, "guardrail_request_duration_seconds",
                                         "Time to the response head, by route.", ("route",))
        self.checks = Counter(r, "guardrail_checks_total", "[CLS] safety checks run.")
        self.intercepts = Counter(r, "guardrail_intercepts_total", "Streams cut by the guard, by source.",
                                  ("source",))
        self.verdict_seconds = Histogram(r, "guardrail_verdict_latency_seconds",
                                         "Time to a verdict (check or chunk), by kind.", ("kind",))
        self.batch_size = Histogram(r, "guardrail_batch_size", "Streams per batched forward pass.",
                                    buckets=SIZE_BUCKETS)
        self.step_seconds = Histogram(r, "guardrail_step_duration_seconds", "One batched forward pass.")
        self.rejected = Counter(r, "guardrail_rejected_total", "Work refused because the queue was full.")
        self.upstream_errors = Counter(r, "guardrail_upstream_errors_total", "Proxy upstream failures.")
        self.sessions_evicted = Counter(r, "guardrail_sessions_evicted_total",
                                        "Sessions dropped before their close, by reason.", ("reason",))
        self.active_sessions = Gauge(r, "guardrail_active_sessions", "Open moderation sessions.")
        self.active_streams = Gauge(r, "guardrail_active_streams",
                                    "Generation and chat streams in progress (each holds a KV cache).")
        self.queue_depth = Gauge(r, "guardrail_queue_depth", "Model steps waiting for the worker.")
        self.session_memory = Gauge(r, "guardrail_session_memory_bytes", "Estimated KV cache bytes held.")

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The page and its content type: OpenMetrics when the scraper asks for it, else the
        Prometheus text format."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def render(self) -> str:
        """The Prometheus text format."""
        return prometheus_client.generate_latest(self.registry).decode()
