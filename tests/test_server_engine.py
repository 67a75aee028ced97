"""The batcher-driven session and generation equal the embedded ones; store, metrics, CLI units."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from guardrail.model.decoding import SamplingParams, generate_events
from guardrail.model.engine import StepRequest
from guardrail.model.session import ModerationSession
from guardrail.server.batcher import Batcher, _Job, group_jobs
from guardrail.server.generation import SteppedGeneration
from guardrail.server.metrics import Metrics
from guardrail.server.moderation import SteppedSession
from guardrail.server.sessions import SessionStore
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import GuardConfig
from tests.test_server_support import make_model

CHUNKS = ["The quick ", "brown fox jum", "ps over the ", "lazy dog, and then ", "it rests."]


def _strip(events: list[Any]) -> list[dict[str, Any]]:
    out = []
    for e in events:
        d = e.model_dump()
        d.pop("timings", None)
        out.append(d)
    return out


@pytest.fixture()
def plain(tokenizer: Any) -> Any:
    return make_model(tokenizer, keyword=False)


def _with_batcher(model: Any, fn: Any) -> Any:
    async def main() -> Any:
        batcher, text = Batcher(model, max_batch=8, max_wait_ms=2), TokenizerThread()
        batcher.start()
        try:
            return await fn(batcher, text)
        finally:
            batcher.stop()
            text.stop()

    return asyncio.run(main())


@pytest.mark.parametrize("config", [GuardConfig(threshold=1.0, hold_back=2),
                                    GuardConfig(threshold=0.0, tau=2)])
def test_stepped_session_equals_embedded(plain: Any, config: GuardConfig) -> None:
    embedded = ModerationSession(plain, "Tell me about foxes", config)
    expected = []
    for c in CHUNKS:
        if embedded.closed:
            break
        expected.append(embedded.feed(c))
    if not embedded.closed:
        expected.append(embedded.close())

    async def run(batcher: Batcher, text: TokenizerThread) -> list[Any]:
        session = SteppedSession(batcher, text, config)
        prompt = await session.start("Tell me about foxes")
        assert prompt.score == pytest.approx(embedded.prompt_verdict.score, abs=1e-6)
        got = []
        for c in CHUNKS:
            if session.closed:
                break
            got.append(await session.feed(c))
        if not session.closed:
            got.append(await session.close())
        return got

    got = _with_batcher(plain, run)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert (a.released, a.intercepted, a.intercept_index, a.tokens, a.label) == (
            b.released, b.intercepted, b.intercept_index, b.tokens, b.label)
        assert a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize(("config", "prefill"), [
    (GuardConfig(hold_back=2), None),
    (GuardConfig(strategy="each", tau=1), "Sure, here is"),
    (GuardConfig(threshold=0.0, tau=1, check_prompt=False), "Sure"),
    (GuardConfig(threshold=0.0, tau=1, check_prompt=False, action="stop"), None),
])
def test_stepped_generation_equals_embedded(plain: Any, config: GuardConfig, prefill: str | None) -> None:
    params = SamplingParams(max_new_tokens=10)
    expected = _strip(list(generate_events(plain, "Hello", config, params, prefill=prefill)))

    async def run(batcher: Batcher, text: TokenizerThread) -> list[Any]:
        gen = SteppedGeneration(batcher, text, "Hello", config, params, prefill=prefill)
        return [e async for e in gen.events()]

    got = _strip(_with_batcher(plain, run))
    assert [e["type"] for e in got] == [e["type"] for e in expected]
    for a, b in zip(got, expected, strict=True):
        if "score" in a:
            assert a.pop("score") == pytest.approx(b.pop("score"), abs=1e-5)
        assert a == b


def test_concurrent_sessions_share_passes_and_match(plain: Any) -> None:
    config = GuardConfig(threshold=1.0, hold_back=1)
    prompts = [f"prompt number {i}" for i in range(6)]
    expected = []
    for p in prompts:
        s = ModerationSession(plain, p, config)
        expected.append([s.feed(c).score for c in CHUNKS])

    async def run(batcher: Batcher, text: TokenizerThread) -> tuple[list[list[float]], int, int]:
        async def one(p: str) -> list[float]:
            s = SteppedSession(batcher, text, config)
            await s.start(p)
            return [(await s.feed(c)).score for c in CHUNKS]

        scores = await asyncio.gather(*(one(p) for p in prompts))
        return list(scores), batcher.passes, batcher.steps

    scores, passes, steps = _with_batcher(plain, run)
    for got, want in zip(scores, expected, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert passes < steps  # several streams rode in the same forward pass


def test_group_jobs_keeps_padding_small() -> None:
    loop = asyncio.new_event_loop()
    try:
        jobs = [_Job(loop, loop.create_future(), request=StepRequest(None, [0] * n))  # type: ignore[arg-type]
                for n in (1, 1, 3, 500, 1, 600, 40)]
        groups = [[j.size for j in g] for g in group_jobs(jobs, max_batch=16)]
        assert groups == [[1, 1, 1, 3], [40], [500, 600]]
        assert all(len(g) <= 2 for g in group_jobs(jobs, max_batch=2))
    finally:
        loop.close()


class _Stub:
    def __init__(self, tokens: int) -> None:
        self.cached_tokens = tokens
        self.lock = asyncio.Lock()


def test_session_store_ttl_lru_and_memory() -> None:
    now = [0.0]
    metrics = Metrics()
    store = SessionStore(max_sessions=3, ttl_s=10, max_bytes=1000, bytes_per_token=10, metrics=metrics,
                         clock=lambda: now[0])
    a, b, c = (store.add(_Stub(20)) for _ in range(3))  # type: ignore[arg-type]
    store.get(a.id)  # a is now most recent; b is the LRU
    d = store.add(_Stub(20))  # type: ignore[arg-type]
    with pytest.raises(Exception, match="evicted") as err:
        store.get(b.id)
    assert err.value.status == 410  # type: ignore[attr-defined]
    big = store.add(_Stub(90))  # type: ignore[arg-type]
    assert store.memory_bytes() <= 1000 and store.get(big.id)
    with pytest.raises(Exception, match="too many"):
        store.get(c.id)
    with pytest.raises(Exception, match="memory bound"):
        store.get(a.id)
    now[0] = 100.0
    left = len(store)
    assert store.sweep() == left and len(store) == 0
    with pytest.raises(Exception, match="expired"):
        store.get(big.id)
    with pytest.raises(Exception, match="not found"):
        store.get("sess_unknown")
    assert not store.remove("sess_unknown")
    assert metrics.sessions_evicted.value(reason="evicted") >= 1
    del d


def test_metrics_render_prometheus_text() -> None:
    m = Metrics()
    m.requests.inc(method="GET", route='/a"b', status="200")
    m.verdict_seconds.observe(0.003, kind="chunk")
    m.verdict_seconds.observe(7.0, kind="chunk")
    text = m.render()
    assert '# TYPE guardrail_requests_total counter' in text
    assert 'guardrail_requests_total{method="GET",route="/a\\"b",status="200"} 1' in text
    assert 'guardrail_verdict_latency_seconds_bucket{kind="chunk",le="0.005"} 1' in text
    assert 'guardrail_verdict_latency_seconds_bucket{kind="chunk",le="+Inf"} 2' in text
    assert 'guardrail_verdict_latency_seconds_count{kind="chunk"} 2' in text
    assert "guardrail_checks_total 0" in text


def test_serve_command_flags() -> None:
    from guardrail.cli import build_parser

    args = build_parser().parse_args(["serve", "--port", "9", "--upstream", "http://x/v1", "--api-key", "k",
                                      "--max-sessions", "4", "--session-ttl", "5", "--max-batch", "8",
                                      "--max-wait-ms", "1", "--log-text"])
    assert args.host == "127.0.0.1" and args.port == 9 and args.max_batch == 8 and args.log_text


def test_batcher_spans_cover_the_wait_and_the_pass(plain: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tracer provider, each pass is a span and each step's wait sits under its caller's span."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail.server import batcher as batcher_module

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    monkeypatch.setattr(batcher_module, "_tracer", lambda: tracer)
    secret = "the secret prompt text"

    async def run(batcher: Batcher, text: TokenizerThread) -> None:
        async def one(i: int) -> None:
            with tracer.start_as_current_span(f"request-{i}"):
                session = SteppedSession(batcher, text, GuardConfig(threshold=1.0, period=2))
                await session.start(secret)
                await session.feed(" alpha beta gamma delta epsilon ")

        await asyncio.gather(one(0), one(1))

    _with_batcher(plain, run)
    spans = exporter.get_finished_spans()
    passes = [s for s in spans if s.name == "guardrail.batcher.pass"]
    waits = [s for s in spans if s.name == "guardrail.batcher.wait"]
    requests = {s.context.span_id: s for s in spans if s.name.startswith("request-")}
    assert passes and len(waits) == 4  # two steps (prompt, chunk) for each of two sessions
    assert sum(s.attributes["guardrail.batch.size"] for s in passes) == 4
    assert sum(s.attributes["guardrail.batch.checks"] for s in passes) >= 4
    assert all(w.parent is not None and w.parent.span_id in requests for w in waits)
    assert all(w.links and w.end_time >= w.start_time for w in waits)
    assert not any(secret in str(value) for s in spans for value in (s.attributes or {}).values())
