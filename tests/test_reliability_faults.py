"""Faults on real processes: a killed and restarted sidecar, a broken upstream, hang-ups, eviction.

Each sidecar here is `python -m guardrail.cli serve` in a child process on a free loopback
port, with a tiny random model: the tests assert mechanics (what reaches the app, how fast,
what is freed), and set thresholds so that labels never depend on the random head.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardrail.client import FallbackChunkVerdict, FallbackVerdict, GuardrailClient
from guardrail.guard import Guard
from guardrail.streaming import moderate
from guardrail.types import GuardConfig
from tests.test_reliability_support import (
    FLAG_NONE,
    RawUpstream,
    Sidecar,
    metric,
    sse_chunk,
    tiny_model_dirs,
    wait_for,
)

UPSTREAM_TIMEOUT_S = 2.0
WORDS = [f" w{i}" for i in range(400)]


def _script(body: dict[str, Any]) -> list[bytes | None]:
    """The upstream's answer, chosen by the last user message."""
    kind = body["messages"][-1]["content"]
    start = [sse_chunk(""), *(sse_chunk(w) for w in WORDS[:5])]
    if kind == "stall":
        return [*start, None]
    if kind == "malformed":
        return [*start, b"data: {not json\n\n"]
    if kind == "drop":
        return [*start, b"<close>"]
    if kind == "long":
        return [sse_chunk(""), *(sse_chunk(w) for w in WORDS), sse_chunk(None, "stop"), b"data: [DONE]\n\n"]
    return [*start, sse_chunk(None, "stop"), b"data: [DONE]\n\n"]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_model_dirs(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    with RawUpstream(_script, delay_s=0.02) as up:
        yield up


@pytest.fixture(scope="module")
def proxy(tiny_dirs: tuple[Path, Path], upstream: RawUpstream, tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Sidecar]:
    model, head = tiny_dirs
    log = tmp_path_factory.mktemp("logs") / "proxy.log"
    with Sidecar("--upstream", upstream.url, "--upstream-timeout", str(UPSTREAM_TIMEOUT_S),
                 "--max-sessions", "3", "--max-wait-ms", "0", model=model, head=head, log_path=log) as srv:
        yield srv


def _chat(text: str, stream: bool = True) -> dict[str, Any]:
    return {"model": "m", "stream": stream, "messages": [{"role": "user", "content": text}],
            "guardrail": FLAG_NONE}


def _read_stream(url: str, text: str, timeout: float = 20.0) -> tuple[list[dict[str, Any]], float]:
    started = time.monotonic()
    events = []
    with httpx.Client(timeout=timeout) as c, c.stream("POST", url + "/v1/chat/completions",
                                                      json=_chat(text)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                events.append(json.loads(line[5:]))
    return events, time.monotonic() - started


# -- upstream faults (proxy mode) ------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["stall", "malformed", "drop"])
def test_broken_upstream_ends_the_stream_with_a_clean_error(proxy: Sidecar, kind: str) -> None:
    events, elapsed = _read_stream(proxy.url, kind)
    assert "error" in events[-1], events[-1]
    assert events[-1]["error"]["type"] == "upstream_error"
    assert elapsed < UPSTREAM_TIMEOUT_S + 8  # no hang: the upstream timeout bounds a stall
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert "".join(WORDS[:5]).startswith(text)  # only what the upstream sent, in order
    assert httpx.get(proxy.url + "/readyz").status_code == 200


def test_stalled_upstream_non_streaming_is_502_in_time(proxy: Sidecar) -> None:
    started = time.monotonic()
    response = httpx.post(proxy.url + "/v1/chat/completions", json=_chat("stall", stream=False), timeout=20)
    assert response.status_code == 502 and response.json()["error"]["type"] == "upstream_error"
    assert time.monotonic() - started < UPSTREAM_TIMEOUT_S + 8


# -- hang-ups free what the stream held ------------------------------------------------------------
def test_chat_stream_hang_up_frees_the_stream(proxy: Sidecar) -> None:
    before = metric(proxy.url, "guardrail_active_streams")
    with httpx.Client(timeout=20) as c, c.stream("POST", proxy.url + "/v1/chat/completions",
                                                 json=_chat("long")) as response:
        for line in response.iter_lines():
            if '"content": " w' in line:
                assert metric(proxy.url, "guardrail_active_streams") >= 1
                break  # hang up mid-answer
    assert wait_for(lambda: metric(proxy.url, "guardrail_active_streams") <= before, timeout=10)


def test_generation_hang_up_frees_the_stream(proxy: Sidecar) -> None:
    before = metric(proxy.url, "guardrail_active_streams")
    body = {"prompt": "hi", "max_new_tokens": 1000, "config": {**FLAG_NONE, "period": 1}}
    with httpx.Client(timeout=20) as c, c.stream("POST", proxy.url + "/v1/generate", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                break
    assert wait_for(lambda: metric(proxy.url, "guardrail_active_streams") <= before, timeout=10)


def test_session_left_by_the_app_is_freed(proxy: Sidecar) -> None:
    """An app that abandons a moderated stream (an exception) deletes its session on the way out."""
    before = metric(proxy.url, "guardrail_active_sessions")
    with GuardrailClient(proxy.url, config=GuardConfig(**FLAG_NONE)) as client, \
            pytest.raises(RuntimeError), client.session("hi") as session:
        session.feed("some text ")
        assert metric(proxy.url, "guardrail_active_sessions") == before + 1
        raise RuntimeError("the app gave up mid-stream")
    assert metric(proxy.url, "guardrail_active_sessions") == before


# -- session store bounds ------------------------------------------------------------------------
def test_lru_eviction_then_clear_410_never_500(proxy: Sidecar) -> None:
    with httpx.Client(base_url=proxy.url, timeout=20) as c:
        def new() -> str:
            response = c.post("/v1/sessions", json={"prompt": "p", "config": FLAG_NONE})
            assert response.status_code == 201
            return str(response.json()["id"])

        a, b, _c = new(), new(), new()  # the store holds 3
        assert c.post(f"/v1/sessions/{a}/chunks", json={"text": "touch "}).status_code == 200
        new()  # evicts the least recently used: b, not a
        gone = c.post(f"/v1/sessions/{b}/chunks", json={"text": "late "})
        assert gone.status_code == 410 and "evicted" in gone.json()["error"]["message"]
        assert c.post(f"/v1/sessions/{b}/close").status_code == 410
        assert c.delete(f"/v1/sessions/{b}").status_code == 404
        assert c.post(f"/v1/sessions/{a}/chunks", json={"text": "still here "}).status_code == 200
        assert c.post("/v1/sessions/sess_never/chunks", json={"text": "x"}).status_code == 404
        assert metric(proxy.url, "guardrail_active_sessions") <= 3


# -- the sidecar killed mid-stream, then restarted ---------------------------------------------------
def _app_stream(sidecar: Sidecar, chunks: list[str], kill_after: int) -> Iterator[str]:
    """Another model's output; the sidecar dies after `kill_after` chunks."""
    for i, chunk in enumerate(chunks):
        if i == kill_after:
            sidecar.kill()
        yield chunk


def test_sigkill_mid_stream_fail_closed_then_restart(tiny_dirs: tuple[Path, Path]) -> None:
    model, head = tiny_dirs
    chunks = [f"part{i} of the answer " for i in range(8)]
    timeout = 5.0
    with Sidecar(model=model, head=head) as srv:
        guard = Guard(backend=srv.url, config=GuardConfig(**FLAG_NONE), fail_policy="fail_closed",
                      timeout=timeout, retries=1, backoff_s=0.05)
        started = time.monotonic()
        shown = list(moderate(_app_stream(srv, chunks, kill_after=3), prompt="hi", guard=guard,
                              on_violation="replace", replacement="[blocked]"))
        elapsed = time.monotonic() - started
        assert shown[-1] == "[blocked]"  # the app's stream ends blocked ...
        before_kill = "".join(chunks[:3])
        assert before_kill.startswith("".join(shown[:-1]))  # ... after checked text only
        assert "part3" not in "".join(shown)
        assert elapsed < timeout + 3
        client: GuardrailClient = guard._remote
        assert isinstance(client.check_prompt("anyone there?"), FallbackVerdict)

        restarted = Sidecar(model=model, head=head, port=srv.port).start()
        try:
            verdict = client.check_prompt("back again?")  # the same client, the next call
            assert not isinstance(verdict, FallbackVerdict)
            session = client.session("hi")
            assert not isinstance(session.feed("fresh text "), FallbackChunkVerdict)
            assert not isinstance(session.close(), FallbackChunkVerdict)
        finally:
            restarted.stop()


def test_sigkill_mid_stream_fail_open_is_recorded(tiny_dirs: tuple[Path, Path],
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail.tracing import instrument

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    model, head = tiny_dirs
    chunks = [f"part{i} of the answer " for i in range(6)]
    with Sidecar(model=model, head=head) as srv:
        guard = Guard(backend=srv.url, config=GuardConfig(**FLAG_NONE), fail_policy="fail_open",
                      timeout=5.0, retries=1, backoff_s=0.05)
        traced = instrument(guard, tracer_provider=provider)
        caplog.set_level(logging.WARNING, logger="guardrail.client")
        shown = "".join(moderate(_app_stream(srv, chunks, kill_after=2), prompt="hi", guard=traced))
    assert shown == "".join(chunks)  # the stream went on, unchecked after the kill
    client: GuardrailClient = guard._remote
    assert client.fallbacks >= 1  # metric
    assert any("fail_open" in r.getMessage() for r in caplog.records)  # log
    events = [e for s in exporter.get_finished_spans() for e in s.events if e.name == "guardrail.fallback"]
    assert events and dict(events[0].attributes or {})["guardrail.fail_policy"] == "fail_open"  # span event
