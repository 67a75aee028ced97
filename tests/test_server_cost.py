"""Every request has a bounded cost: prompt budget, session limit at close, cancelled hang-ups,
graceful shutdown. Real uvicorn on loopback; shutdown on a `guardrail serve` child process."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from tests.test_reliability_support import RawUpstream, Sidecar, sse_chunk, tiny_model_dirs
from tests.test_server_support import ServerThread, make_model

PROMPT_LIMIT = 80
SESSION_LIMIT = 30


@pytest.fixture(scope="module")
def served(tokenizer: Any) -> Iterator[tuple[httpx.Client, Any]]:
    settings = Settings(max_prompt_tokens=PROMPT_LIMIT, max_session_tokens=SESSION_LIMIT,
                        max_body_bytes=1 << 22)
    app = create_app(settings, make_model(tokenizer))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client, app


@pytest.fixture()
def http(served: tuple[httpx.Client, Any]) -> httpx.Client:
    return served[0]


LONG = "please " * 100  # ~130 tokens with the chat template, over the budget
HUGE = "x" * 2_000_000  # certainly over: refused before the tokenizer sees it


@pytest.mark.parametrize("prompt", [LONG, HUGE])
@pytest.mark.parametrize(("path", "extra"), [("/v1/check", {}), ("/v1/sessions", {}),
                                             ("/v1/generate", {"max_new_tokens": 2})])
def test_prompt_over_budget_is_413_naming_the_limit(http: httpx.Client, path: str, extra: dict[str, Any],
                                                     prompt: str) -> None:
    started = time.perf_counter()
    response = http.post(path, json={"prompt": prompt, **extra})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "prompt_too_long" and f"{PROMPT_LIMIT} tokens" in error["message"]
    assert "max_prompt_tokens" in error["message"]
    if prompt is HUGE:
        assert time.perf_counter() - started < 1.5  # no tokenizer pass over 2 MB (~4 s here)


def test_prompt_within_budget_is_checked(http: httpx.Client) -> None:
    assert http.post("/v1/check", json={"prompt": "please " * 20}).status_code == 200
    messages = [{"role": "user", "content": "please " * 100}]
    assert http.post("/v1/check", json={"messages": messages}).status_code == 413


def _session(http: httpx.Client) -> str:
    return str(http.post("/v1/sessions", json={"prompt": "hi", "config": {"hold_back": 4}}).json()["id"])


def test_long_unfinished_word_is_refused_before_it_is_held(http: httpx.Client) -> None:
    sid = _session(http)
    assert http.post(f"/v1/sessions/{sid}/chunks", json={"text": "one two three "}).status_code == 200
    # An unfinished "word" of ~300 tokens would wait in the session until close tokenised it.
    refused = http.post(f"/v1/sessions/{sid}/chunks", json={"text": "ab" * 300})
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "session_too_long"
    assert str(SESSION_LIMIT) in refused.json()["error"]["message"]
    assert http.post(f"/v1/sessions/{sid}/chunks", json={"text": "ab" * 10}).status_code == 200
    assert http.post(f"/v1/sessions/{sid}/close").status_code == 200


def test_session_limit_applies_at_close(served: tuple[httpx.Client, Any]) -> None:
    http, app = served
    sid = _session(http)
    assert http.post(f"/v1/sessions/{sid}/chunks", json={"text": "one two three "}).status_code == 200
    session = app.state.guardrail.sessions.get(sid).session
    held = list(session.response)
    session.state.tokens.pending += "ab" * 300  # a tail that grew past the limit unseen
    closed = http.post(f"/v1/sessions/{sid}/close")
    assert closed.status_code == 413, closed.text
    error = closed.json()["error"]
    assert error["code"] == "session_too_long" and str(SESSION_LIMIT) in error["message"]
    assert session.response == held  # the tail was never tokenised into the session


def test_refused_chunk_leaves_the_session_unchanged(http: httpx.Client) -> None:
    sid = _session(http)
    first = http.post(f"/v1/sessions/{sid}/chunks", json={"text": "one two three "}).json()
    assert http.post(f"/v1/sessions/{sid}/chunks", json={"text": " word" * 40}).status_code == 413
    after = http.post(f"/v1/sessions/{sid}/chunks", json={"text": "four five"}).json()
    assert after["tokens"] == first["tokens"] + 2
    closed = http.post(f"/v1/sessions/{sid}/close")
    assert closed.status_code == 200 and closed.json()["tokens"] <= SESSION_LIMIT


def test_hung_up_checks_never_reach_the_model(tokenizer: Any) -> None:
    model = make_model(tokenizer)
    model.delay_s = 0.4  # type: ignore[attr-defined]
    app = create_app(Settings(max_batch=1, max_wait_ms=0), model)
    with ServerThread(app) as srv:
        batcher = app.state.guardrail.batcher

        def hang_up(i: int) -> None:
            with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=srv.url, timeout=0.2) as c:
                c.post("/v1/check", json={"prompt": f"question {i}"})

        threads = [threading.Thread(target=hang_up, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.4 * 6 + 0.5)  # long enough for all six passes, had they been run
        assert batcher.steps <= 2, batcher.steps  # the one running when they hung up, at most two
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            assert c.post("/v1/check", json={"prompt": "still serving"}).status_code == 200


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_model_dirs(tmp_path_factory.mktemp("tiny"))


def test_sigterm_with_a_request_in_flight_exits_within_seconds(tiny_dirs: tuple[Path, Path]) -> None:
    """A non-streamed completion waits on an upstream that stalls (60 s of patience): SIGTERM
    still ends the server within the graceful-shutdown bound."""
    model, head = tiny_dirs
    stall = lambda _body: [sse_chunk(""), sse_chunk(" hello"), None]  # noqa: E731
    with RawUpstream(stall) as upstream, \
            Sidecar("--upstream", upstream.url, "--graceful-shutdown", "2", model=model, head=head) as srv:
        body = {"messages": [{"role": "user", "content": "hi"}], "guardrail": {"check_prompt": False}}
        answers: list[int] = []

        def ask() -> None:
            try:
                url = srv.url + "/v1/chat/completions"
                answers.append(httpx.post(url, json=body, timeout=60).status_code)
            except httpx.HTTPError:
                answers.append(0)

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        deadline = time.monotonic() + 20
        while upstream.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert upstream.requests == 1, "the request did not reach the upstream"
        time.sleep(0.3)
        assert srv.proc is not None and not answers  # still in flight
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
        assert time.monotonic() - started < 6, "shutdown waited for the stalled request"
        asker.join(timeout=5)


def test_prompt_budget_is_capped_at_half_the_context(tokenizer: Any) -> None:
    """No accepted prompt is ever cut: the budget is at most the room a prompt has before a response."""
    model = make_model(tokenizer)
    half = model.max_context // 2
    with ServerThread(create_app(Settings(max_prompt_tokens=10 * half), model)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        response = c.post("/v1/sessions", json={"prompt": "please " * (half + 10)})
        assert response.status_code == 413
        assert f"limit of {half} tokens" in response.json()["error"]["message"]
        assert c.post("/v1/sessions", json={"prompt": "please " * (half // 2)}).status_code == 201
