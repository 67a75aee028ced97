"""Prometheus text-format metrics, written out by hand to avoid a dependency.

Counters, gauges and histograms with labels; every update takes one lock, which is cheap
next to a model step and keeps updates from the model worker thread safe.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TypeVar

LabelKey = tuple[str, ...]
T = TypeVar("T")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelKey, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        return tuple(str(labels.get(n, "")) for n in self.label_names)

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", *self._samples()]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, labels)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return [f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items]


class Gauge(_Metric):
    """A value set directly, or read from a callback at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text)
        self._value = 0.0
        self._read = read

    def set(self, value: float) -> None:
        with self._lock:
            self._value = value

    def add(self, amount: float) -> None:
        with self._lock:
            self._value += amount

    def value(self) -> float:
        return float(self._read()) if self._read is not None else self._value

    def _samples(self) -> list[str]:
        return [f"{self.name} {_num(self.value())}"]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, labels: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[LabelKey, list[int]] = {}
        self._sums: dict[LabelKey, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            counts[-1] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: str) -> int:
        with self._lock:
            counts = self._counts.get(self._key(labels))
            return counts[-1] if counts else 0

    def _samples(self) -> list[str]:
        lines = []
        with self._lock:
            items = sorted((k, list(v), self._sums[k]) for k, v in self._counts.items())
        for key, counts, total in items:
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, key, le)} {n}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, key)} {_num(total)}")
            lines.append(f"{self.name}_count{_labels(self.label_names, key)} {counts[-1]}")
        return lines


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
    """Every metric the sidecar exports, in one registry per app."""

    def __init__(self) -> None:
        self.requests = Counter("guardrail_requests_total", "HTTP requests by route and status.",
                                ("method", "route", "status"))
        self.request_seconds = Histogram("guardrail_request_duration_seconds",
                                         "Time to the response head, by route.", ("route",))
        self.checks = Counter("guardrail_checks_total", "[CLS] safety checks run.")
        self.intercepts = Counter("guardrail_intercepts_total", "Streams cut by the guard, by source.",
                                  ("source",))
        self.verdict_seconds = Histogram("guardrail_verdict_latency_seconds",
                                         "Time to a verdict (check or chunk), by kind.", ("kind",))
        self.batch_size = Histogram("guardrail_batch_size", "Streams per batched forward pass.",
                                    buckets=SIZE_BUCKETS)
        self.step_seconds = Histogram("guardrail_step_duration_seconds", "One batched forward pass.")
        self.rejected = Counter("guardrail_rejected_total", "Work refused because the queue was full.")
        self.upstream_errors = Counter("guardrail_upstream_errors_total", "Proxy upstream failures.")
        self.sessions_evicted = Counter("guardrail_sessions_evicted_total",
                                        "Sessions dropped before their close, by reason.", ("reason",))
        self.active_sessions = Gauge("guardrail_active_sessions", "Open moderation sessions.")
        self.active_streams = Gauge("guardrail_active_streams",
                                    "Generation and chat streams in progress (each holds a KV cache).")
        self.queue_depth = Gauge("guardrail_queue_depth", "Model steps waiting for the worker.")
        self.session_memory = Gauge("guardrail_session_memory_bytes", "Estimated KV cache bytes held.")

    def all(self) -> list[_Metric]:
        return [v for v in vars(self).values() if isinstance(v, _Metric)]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.all():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
