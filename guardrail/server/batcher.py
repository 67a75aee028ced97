"""Dynamic batching in front of the model: one worker thread, one forward pass for many streams.

New requests are admitted only while the backlog is under its bound (`admit` raises
`QueueFullError`, which the routes turn into 429 with Retry-After). The worker takes the
first waiting step, gathers more for at most `max_wait_ms` or until `max_batch`, runs them through
`SafetyModel.step_many` in as few passes as padding allows, and resolves each caller's
future on its own loop. Model code never runs on the event-loop thread.

With OpenTelemetry and a tracer provider set, each pass is a `guardrail.batcher.pass` span
(batch size, tokens, checks, the longest wait) and each step a `guardrail.batcher.wait` span
under its caller's span, from enqueueing to its pass, linked to the pass. No text is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.server.memory import HeapTrimmer
from guardrail.server.metrics import Metrics

try:  # optional: spans only where the application set a tracer provider
    from opentelemetry import context as _otel_context
    from opentelemetry import trace as _otel_trace
except ImportError:  # pragma: no cover - exercised where opentelemetry is absent
    _otel_trace = None  # type: ignore[assignment]
    _otel_context = None  # type: ignore[assignment]

log = logging.getLogger("guardrail.server")
T = TypeVar("T")

SMALL_STEP = 8  # steps this short always share a pass; longer ones group with similar lengths
SMALL_PASS_ROWS = 32  # passes of SMALL_STEP to this many rows (a chunk with its checks) feed `small_pass_s`
IDLE_S = 1.0  # an idle worker releases its pass scratch and trims the heap (when due) this often


class QueueFullError(RuntimeError):
    """The model worker is saturated; the caller should retry later."""

    def __init__(self, retry_after_s: float) -> None:
        super().__init__("the model worker queue is full; retry later")
        self.retry_after_s = retry_after_s


class BatcherStoppedError(RuntimeError):
    """The server is shutting down."""


@dataclass
class _Job:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    request: StepRequest | None = None
    post: Callable[[StepOutput], Any] | None = None
    fn: Callable[[], Any] | None = None
    enqueued: float = field(default_factory=time.perf_counter)
    enqueued_ns: int = field(default_factory=time.time_ns)
    trace_context: Any = None  # the caller's OpenTelemetry context, when tracing

    @property
    def size(self) -> int:
        """Rows this step adds to a pass: its new tokens and its [CLS] checks."""
        return len(self.request.token_ids) + len(self.request.checks) if self.request is not None else 0


def _tracer() -> Any:
    """A tracer when OpenTelemetry is importable and a real tracer provider is set, else None."""
    if _otel_trace is None:
        return None
    provider = _otel_trace.get_tracer_provider()
    if isinstance(provider, _otel_trace.ProxyTracerProvider | _otel_trace.NoOpTracerProvider):
        return None
    return provider.get_tracer("guardrail.server.batcher")


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller went away (client disconnect, timeout)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _apply(post: Callable[[StepOutput], Any] | None, out: StepOutput) -> Callable[[], Any]:
    return (lambda: post(out)) if post is not None else (lambda: out)


def group_jobs(jobs: list[_Job], max_batch: int) -> list[list[_Job]]:
    """Split one drained batch into passes whose padding stays small.

    `step_many` pads every row to the longest new-token count, so a 500-token prefill
    would make fifteen 1-token decode steps cost 500 rows each. Short steps share a pass;
    long ones share it with lengths within a factor of two.
    """
    groups: list[list[_Job]] = []
    current: list[_Job] = []
    for job in sorted(jobs, key=lambda j: j.size):
        if current and (len(current) >= max_batch or job.size > max(SMALL_STEP, 2 * current[0].size)):
            groups.append(current)
            current = []
        current.append(job)
    if current:
        groups.append(current)
    return groups


class Batcher:
    """Owns the model worker thread; the only path from the event loop to the model."""

    def __init__(self, model: SafetyModel, *, max_batch: int = 16, max_wait_ms: float = 2.0,
                 max_queue: int = 256, metrics: Metrics | None = None,
                 heap_trim_interval_s: float = 2.0) -> None:
        self.model = model
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000
        self.metrics = metrics or Metrics()
        self.max_queue = max_queue
        # Unbounded: admission is bounded instead (`admit`), so a stream already admitted
        # never fails half way; each admitted stream has at most one step waiting.
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._step_ewma_s = 0.05
        self._small_pass_ewma_s = 0.1
        self.passes = 0
        self.steps = 0
        self.metrics.queue_depth._read = self._queue.qsize
        self.trimmer = HeapTrimmer(heap_trim_interval_s)

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="guardrail-model", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- event-loop side ----------------------------------------------------------------------
    def admit(self) -> None:
        """Refuse new work while the backlog is at its bound (the route answers 429)."""
        if self._queue.qsize() >= self.max_queue:
            self.metrics.rejected.inc()
            raise QueueFullError(self.retry_after_s())

    async def step(self, request: StepRequest, post: Callable[[StepOutput], T] | None = None) -> Any:
        """Run one stream's step in the next batched pass; `post` runs in the worker too."""
        context = _otel_context.get_current() if _otel_context is not None and _tracer() else None
        return await self._submit(_Job(asyncio.get_running_loop(), self._future(), request=request,
                                       post=post, trace_context=context))

    async def call(self, fn: Callable[[], T]) -> T:
        """Run other model work (cache surgery) on the worker thread, in order with steps."""
        result: T = await self._submit(_Job(asyncio.get_running_loop(), self._future(), fn=fn))
        return result

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, job: _Job) -> Any:
        if self._stopping or not self.running:
            raise BatcherStoppedError("the model worker is not running")
        self._queue.put_nowait(job)
        return await job.future

    @property
    def small_pass_s(self) -> float:
        """What a small pass (a chunk with its checks) takes now: a recent average, for callers
        that weigh waiting against a pass of its own."""
        return self._small_pass_ewma_s

    def retry_after_s(self) -> float:
        """How long the current backlog takes to drain, as a hint for Retry-After."""
        passes = self._queue.qsize() / max(1, self.max_batch) + 1
        return max(1.0, passes * self._step_ewma_s)

    # -- worker side --------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=IDLE_S)
            except queue.Empty:  # idle: drop the pass scratch; what sessions freed goes back too
                self.model.release_scratch()
                self.trimmer.maybe_trim()
                continue
            if first is None:
                return
            jobs = [first]
            deadline = time.perf_counter() + self.max_wait_s
            while len(jobs) < self.max_batch * 2:
                remaining = deadline - time.perf_counter()
                try:
                    job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._stopping = True
                    break
                jobs.append(job)
            self._execute(jobs)
            self.trimmer.mark()
            self.trimmer.maybe_trim()  # between passes; it trims every thread's arena
            if self._stopping and self._queue.empty():
                self._fail_pending()
                return

    def _fail_pending(self) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.loop.call_soon_threadsafe(_resolve, job.future, None,
                                              BatcherStoppedError("server shutting down"))

    def _execute(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.done()]  # skip work nobody waits for
        steps = [j for j in live if j.request is not None]
        for job in live:
            if job.fn is not None:  # ordered before steps drained with it; callers await anyway
                self._finish(job, job.fn)
        for group in group_jobs(steps, self.max_batch):
            self._run_group(group)

    def _run_group(self, group: list[_Job]) -> None:
        tracer = _tracer()
        if tracer is None:
            self._pass(group)
            return
        started_ns = time.time_ns()
        requests = [j.request for j in group if j.request is not None]
        attributes = {
            "guardrail.batch.size": len(group),
            "guardrail.batch.tokens": sum(len(r.token_ids) for r in requests),
            "guardrail.batch.checks": sum(len(r.checks) for r in requests),
            "guardrail.batch.max_wait_ms": max((started_ns - j.enqueued_ns) / 1e6 for j in group),
        }
        with tracer.start_as_current_span("guardrail.batcher.pass", attributes=attributes) as span:
            link = _otel_trace.Link(span.get_span_context())
            for job in group:
                if job.trace_context is not None:
                    wait = tracer.start_span("guardrail.batcher.wait", context=job.trace_context,
                                             start_time=job.enqueued_ns, links=[link],
                                             attributes={"guardrail.step.rows": job.size})
                    wait.end(end_time=started_ns)
            self._pass(group)

    def _pass(self, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            outputs = self.model.step_many([j.request for j in group if j.request is not None])
        except Exception as exc:
            if len(group) == 1:
                log.exception("model step failed")
                group[0].loop.call_soon_threadsafe(_resolve, group[0].future, None, exc)
                return
            # isolate the failing stream; a failed pass rolls its caches back
            log.exception("batched pass failed; retrying its %d streams one by one", len(group))
            for job in group:
                self._pass([job])
            return
        elapsed = time.perf_counter() - started
        self.passes += 1
        self.steps += len(group)
        self._step_ewma_s = 0.8 * self._step_ewma_s + 0.2 * elapsed
        if SMALL_STEP <= sum(j.size for j in group) <= SMALL_PASS_ROWS:
            self._small_pass_ewma_s = 0.8 * self._small_pass_ewma_s + 0.2 * elapsed
        self.metrics.batch_size.observe(len(group))
        self.metrics.step_seconds.observe(elapsed)
        self.metrics.checks.inc(sum(len(j.request.checks) for j in group if j.request is not None))
        for job, out in zip(group, outputs, strict=True):
            self._finish(job, _apply(job.post, out))

    @staticmethod
    def _finish(job: _Job, fn: Callable[[], Any]) -> None:
        try:
            result, error = fn(), None
        except Exception as exc:
            result, error = None, exc
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
