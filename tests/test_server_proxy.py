"""Proxy mode against a real scripted upstream, and the official openai client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import create_app
from tests.test_server_support import (
    SAFE_PART,
    ServerThread,
    fake_upstream,
    free_port,
    lax_settings,
    make_model,
)

STRICT = {"tau": 1, "hold_back": 2, "threshold": 0.5}
MESSAGES = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, list[dict[str, Any]]]]:
    app, received = fake_upstream()
    with ServerThread(app) as srv:
        yield srv, received


@pytest.fixture(scope="module")
def safe_upstream() -> Iterator[ServerThread]:
    app, _ = fake_upstream(SAFE_PART)
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def proxy(tokenizer: Any, upstream: tuple[ServerThread, list[dict[str, Any]]]) -> Iterator[ServerThread]:
    settings = lax_settings(upstream=upstream[0].url + "/v1", upstream_api_key="up-key")
    with ServerThread(create_app(settings, make_model(tokenizer))) as srv:
        yield srv


def _stream(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.Client(timeout=30) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_stream_turning_unsafe_is_cut_and_marked(proxy: ServerThread,
                                                 upstream: tuple[ServerThread, list[dict[str, Any]]]) -> None:
    chunks = _stream(proxy.url, {"model": "m", "messages": MESSAGES, "stream": True, "guardrail": STRICT})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "bomb" not in text and "recipe" not in text
    assert text.startswith("Sure, I can help")
    assert text.endswith("I'm sorry, but I can't help with that.")
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "content_filter"
    assert last["guardrail"]["intercepted"] is True and last["guardrail"]["mode"] == "proxy"
    assert last["guardrail"]["intercept"]["stage"] == "response"
    assert last["model"] == "upstream-model"
    sent = upstream[1][-1]
    assert sent["authorization"] == "Bearer up-key" and "guardrail" not in sent["body"]
    assert sent["body"]["stream"] is True


def test_non_streaming_proxy_is_cut_too(proxy: ServerThread) -> None:
    with httpx.Client(timeout=30) as c:
        body = c.post(proxy.url + "/v1/chat/completions",
                      json={"messages": MESSAGES, "guardrail": STRICT}).json()
    content = body["choices"][0]["message"]["content"]
    assert "bomb" not in content and body["choices"][0]["finish_reason"] == "content_filter"
    assert body["guardrail"]["intercept"]["action"] == "refuse"


def test_stop_action_sends_no_refusal(proxy: ServerThread) -> None:
    body = {"messages": MESSAGES, "stream": True, "guardrail": {**STRICT, "action": "stop"}}
    chunks = _stream(proxy.url, body)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "bomb" not in text and "sorry" not in text
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_safe_stream_passes_through_whole(tokenizer: Any, safe_upstream: ServerThread) -> None:
    settings = lax_settings(upstream=safe_upstream.url + "/v1")
    with ServerThread(create_app(settings, make_model(tokenizer))) as srv:
        chunks = _stream(srv.url, {"messages": MESSAGES, "stream": True, "guardrail": STRICT})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == SAFE_PART
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["guardrail"]["intercepted"] is False


def test_prompt_flagged_never_streams_upstream_text(proxy: ServerThread) -> None:
    messages = [{"role": "user", "content": "How do I build a bomb?"}]
    chunks = _stream(proxy.url, {"messages": messages, "stream": True, "guardrail": STRICT})
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "I'm sorry, but I can't help with that."
    assert chunks[-1]["guardrail"]["intercept"]["stage"] == "prompt"


def test_upstream_errors_are_502(tokenizer: Any, proxy: ServerThread) -> None:
    with httpx.Client(timeout=30) as c:
        failed = c.post(proxy.url + "/v1/chat/completions",
                        json={"messages": [{"role": "user", "content": "FAIL"}], "stream": True})
        assert failed.status_code == 502 and "500" in failed.json()["error"]["message"]
    dead = lax_settings(upstream=f"http://127.0.0.1:{free_port()}/v1")
    with ServerThread(create_app(dead, make_model(tokenizer))) as srv, httpx.Client(timeout=30) as c:
        response = c.post(srv.url + "/v1/chat/completions", json={"messages": MESSAGES})
        assert response.status_code == 502 and "unreachable" in response.json()["error"]["message"]
        assert c.get(srv.url + "/healthz").status_code == 200


def test_official_openai_client_against_proxy(proxy: ServerThread) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                            extra_body={"guardrail": STRICT})
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "bomb" not in "".join(parts) and finish == "content_filter"
    full = client.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                          extra_body={"guardrail": STRICT})
    assert full.choices[0].finish_reason == "content_filter"
    assert "bomb" not in (full.choices[0].message.content or "")


def test_official_openai_client_local_mode(tokenizer: Any) -> None:
    openai = pytest.importorskip("openai")
    with ServerThread(create_app(lax_settings(), make_model(tokenizer))) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused", max_retries=0)
        full = client.chat.completions.create(model="guardrail", max_tokens=5,
                                              messages=[{"role": "user", "content": "hi"}])
        assert full.choices[0].finish_reason in ("stop", "length")
        chunks = list(client.chat.completions.create(model="guardrail", max_tokens=5, stream=True,
                                                     messages=[{"role": "user", "content": "hi"}]))
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
