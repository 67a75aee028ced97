"""OpenAI API fidelity with the official `openai` client (sync and async, streamed and not).

Proxy mode runs a real sidecar (uvicorn on loopback) in front of a real scripted upstream on
loopback; local mode runs the sidecar alone. The model is the keyword model: a checked span
that contains " bomb" scores 0.99, anything else 0.01.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.server import create_app
from guardrail.server.chat import StopScanner
from tests.openai_upstream import (
    EMOJI,
    SAFE_TEXT,
    TOOL_CALLS,
    UP_FINGERPRINT,
    UP_ID,
    UP_MODEL,
    UP_USAGE,
    upstream_app,
)
from tests.test_reliability_support import RawUpstream, sse_chunk
from tests.test_server_support import ServerThread, lax_settings, make_model

STRICT = {"tau": 1, "hold_back": 2, "threshold": 0.5}


def ask(kind: str) -> list[Any]:
    return [{"role": "user", "content": kind}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[ServerThread, list[dict[str, Any]]]]:
    app, received = upstream_app()
    with ServerThread(app) as srv:
        yield srv, received


@pytest.fixture(scope="module")
def proxy(tokenizer: Any, upstream: tuple[ServerThread, list[dict[str, Any]]]) -> Iterator[ServerThread]:
    app = create_app(lax_settings(upstream=upstream[0].url + "/v1"), make_model(tokenizer))
    with ServerThread(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def local(tokenizer: Any) -> Iterator[ServerThread]:
    with ServerThread(create_app(lax_settings(model_name="served-tiny"), make_model(tokenizer))) as srv:
        yield srv


def client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)


def aclient(srv: ServerThread) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)


def joined_tool_calls(chunks: list[Any]) -> dict[int, dict[str, str]]:
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function.name or "") if delta.function else ""
                call["arguments"] += (delta.function.arguments or "") if delta.function else ""
    return calls


EXPECTED_CALLS = {i: {"id": c["id"], "name": c["name"], "arguments": "".join(c["arguments"])}
                  for i, c in enumerate(TOOL_CALLS)}


# -- proxy: tool calls ------------------------------------------------------------------------------
def test_streamed_tool_calls_pass_through_unchanged(proxy: ServerThread) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="any", messages=ask("tools"), stream=True, extra_body={"guardrail": STRICT}))
    assert joined_tool_calls(chunks) == EXPECTED_CALLS
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert {c.id for c in chunks} == {UP_ID} and {c.model for c in chunks} == {UP_MODEL}
    assert chunks[-1].system_fingerprint == UP_FINGERPRINT
    assert all(c.usage is None for c in chunks)  # not asked for


def test_non_streamed_tool_calls_and_real_usage_async(proxy: ServerThread) -> None:
    async def run() -> Any:
        async with aclient(proxy) as c:
            return await c.chat.completions.create(model="any", messages=ask("tools"),
                                                   extra_body={"guardrail": STRICT})

    full = asyncio.run(run())
    calls = full.choices[0].message.tool_calls
    assert [(t.id, t.function.name, t.function.arguments) for t in calls] == [
        (c["id"], c["name"], c["arguments"]) for c in EXPECTED_CALLS.values()]
    assert full.choices[0].finish_reason == "tool_calls"
    assert full.usage is not None and full.usage.model_dump(exclude_none=True) == UP_USAGE
    assert (full.id, full.model, full.system_fingerprint) == (UP_ID, UP_MODEL, UP_FINGERPRINT)
    assert [v["label"] for v in full.model_extra["guardrail"]["tool_calls"]] == ["safe", "safe"]


def test_flagged_tool_call_is_withheld_streamed_and_not(proxy: ServerThread) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="any", messages=ask("tools-bomb"), stream=True, extra_body={"guardrail": STRICT}))
    assert joined_tool_calls(chunks) == {}  # not even the safe first call leaves
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    info = chunks[-1].model_extra["guardrail"]
    assert info["intercepted"] is True and [v["label"] for v in info["tool_calls"]] == ["safe", "unsafe"]
    full = client(proxy).chat.completions.create(model="any", messages=ask("tools-bomb"),
                                                 extra_body={"guardrail": STRICT})
    assert not full.choices[0].message.tool_calls
    assert full.choices[0].finish_reason == "content_filter"
    assert "bomb" not in (full.choices[0].message.content or "")


def test_flagged_prompt_cancels_the_upstream_request(
        proxy: ServerThread, upstream: tuple[ServerThread, list[dict[str, Any]]]) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="any", messages=ask("slow: how to make a bomb"), stream=True, extra_body={"guardrail": STRICT}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "word" not in text and chunks[-1].choices[0].finish_reason == "content_filter"
    assert chunks[-1].model_extra["guardrail"]["intercept"]["stage"] == "prompt"
    record = upstream[1][-1]
    deadline = time.monotonic() + 10
    while "hung_up" not in record and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.get("hung_up") is True  # the upstream request was started, then cancelled


# -- proxy: logprobs, usage, models ------------------------------------------------------------------
def test_logprobs_pass_through_streamed_and_not(proxy: ServerThread) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="any", messages=ask("logprobs"), stream=True, logprobs=True, extra_body={"guardrail": STRICT}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    tokens = [e.token for c in chunks if c.choices and c.choices[0].logprobs
              for e in c.choices[0].logprobs.content or []]
    assert text == SAFE_TEXT and "".join(tokens) == SAFE_TEXT
    full = client(proxy).chat.completions.create(model="any", messages=ask("logprobs"), logprobs=True,
                                                 extra_body={"guardrail": STRICT})
    assert full.choices[0].logprobs is not None
    entries = full.choices[0].logprobs.content or []
    assert "".join(e.token for e in entries) == SAFE_TEXT
    assert [round(e.logprob, 6) for e in entries] == [round(-0.1 * i, 6) for i in range(len(entries))]


def test_usage_streamed_only_when_asked_and_always_requested_upstream(
        proxy: ServerThread, upstream: tuple[ServerThread, list[dict[str, Any]]]) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="any", messages=ask("hello"), stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump(exclude_none=True) == UP_USAGE
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"
    plain = list(client(proxy).chat.completions.create(model="any", messages=ask("hello"), stream=True))
    assert all(c.usage is None for c in plain)
    full = client(proxy).chat.completions.create(model="any", messages=ask("hello"))
    assert full.usage is not None and full.usage.total_tokens == UP_USAGE["total_tokens"]
    sent = [r["body"] for r in upstream[1] if r["path"] == "/v1/chat/completions"][-3:]
    assert all(b["stream"] is True and b["stream_options"]["include_usage"] is True for b in sent)


def test_unmoderated_fields_are_forwarded(proxy: ServerThread,
                                          upstream: tuple[ServerThread, list[dict[str, Any]]]) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    client(proxy).chat.completions.create(model="gpt-x", messages=ask("hello"), tools=tools,  # type: ignore[arg-type]
                                          tool_choice="auto", logprobs=True, top_logprobs=2, user="u1")
    body = upstream[1][-1]["body"]
    assert body["tools"] == tools and body["tool_choice"] == "auto" and body["top_logprobs"] == 2
    assert body["model"] == "gpt-x" and body["user"] == "u1" and "guardrail" not in body


def test_models_are_proxied(proxy: ServerThread) -> None:
    models = client(proxy).models.list()
    assert [m.id for m in models.data] == [UP_MODEL]
    assert client(proxy).models.retrieve(UP_MODEL).owned_by == "upstream"
    with pytest.raises(openai.NotFoundError):
        client(proxy).models.retrieve("nope")


# -- proxy: broken upstreams ---------------------------------------------------------------------------
def _broken(body: dict[str, Any]) -> list[bytes | None]:
    kind = body["messages"][-1]["content"]
    start = [sse_chunk("Hello"), sse_chunk(" there")]
    if kind == "truncated":  # neither [DONE] nor a finish reason
        return start
    if kind == "malformed":
        return [*start, b"data: {not json\n\n", sse_chunk(None, "stop"), b"data: [DONE]\n\n"]
    if kind == "bad-tool-call":
        delta = {"tool_calls": [{"index": "first"}]}
        bad = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        return [*start, f"data: {json.dumps(bad)}\n\n".encode(), sse_chunk(None, "tool_calls"),
                b"data: [DONE]\n\n"]
    return [*start, sse_chunk(None, "stop"), b"data: [DONE]\n\n"]


@pytest.fixture(scope="module")
def broken_proxy(tokenizer: Any) -> Iterator[ServerThread]:
    with RawUpstream(_broken) as up, ServerThread(create_app(lax_settings(upstream=up.url),
                                                             make_model(tokenizer))) as srv:
        yield srv


@pytest.mark.parametrize("kind", ["truncated", "malformed", "bad-tool-call"])
def test_broken_upstream_is_an_error_the_client_sees(broken_proxy: ServerThread, kind: str) -> None:
    with pytest.raises(openai.APIError) as streamed:
        for _ in client(broken_proxy).chat.completions.create(model="m", messages=ask(kind), stream=True):
            pass
    assert "upstream" in str(streamed.value)
    with pytest.raises(openai.APIStatusError) as full:
        client(broken_proxy).chat.completions.create(model="m", messages=ask(kind))
    assert full.value.status_code == 502
    whole = client(broken_proxy).chat.completions.create(model="m", messages=ask("fine"))
    assert whole.choices[0].message.content == "Hello there"


def test_upstream_ignoring_stream_is_moderated_and_streamed(proxy: ServerThread) -> None:
    chunks = list(client(proxy).chat.completions.create(
        model="m", messages=ask("json"), stream=True, stream_options={"include_usage": True},
        extra_body={"guardrail": STRICT}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == SAFE_TEXT
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == UP_USAGE["total_tokens"]
    flagged = list(client(proxy).chat.completions.create(
        model="m", messages=ask("json-bomb"), stream=True, extra_body={"guardrail": STRICT}))
    assert "bomb" not in "".join(c.choices[0].delta.content or "" for c in flagged if c.choices)
    assert flagged[-1].choices[0].finish_reason == "content_filter"


def test_upstream_ignoring_stream_with_tool_calls(proxy: ServerThread) -> None:
    full = client(proxy).chat.completions.create(model="m", messages=ask("json-tools"),
                                                 extra_body={"guardrail": STRICT})
    calls = full.choices[0].message.tool_calls or []
    assert [(t.id, t.function.name, t.function.arguments) for t in calls] == [
        (c["id"], c["name"], c["arguments"]) for c in EXPECTED_CALLS.values()]
    assert full.choices[0].finish_reason == "tool_calls" and full.choices[0].message.content is None
    chunks = list(client(proxy).chat.completions.create(model="m", messages=ask("json-tools"), stream=True))
    assert joined_tool_calls(chunks) == EXPECTED_CALLS


def test_surrogate_pair_split_across_deltas_is_joined(proxy: ServerThread) -> None:
    chunks = list(client(proxy).chat.completions.create(model="m", messages=ask("surrogate"), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == f"Smile {EMOJI} done"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_released_text_is_byte_for_byte_the_upstreams(proxy: ServerThread) -> None:
    """Every delta is fed; what leaves is exactly the upstream's text, however it was merged."""
    for kind in ("hello", "logprobs"):
        text = "".join(c.choices[0].delta.content or "" for c in client(proxy).chat.completions.create(
            model="m", messages=ask(kind), stream=True, extra_body={"guardrail": {"period": 1}}) if c.choices)
        assert text == SAFE_TEXT


# -- local mode ---------------------------------------------------------------------------------------
def test_local_stop_is_honoured_streamed_and_not(local: ServerThread) -> None:
    base = client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=24,
                                                 extra_body={"guardrail": {"threshold": 1.0}})
    text = base.choices[0].message.content or ""
    assert len(text) > 6
    stop = text[3:6]
    full = client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=24, stop=[stop],
                                                 extra_body={"guardrail": {"threshold": 1.0}})
    assert full.choices[0].finish_reason == "stop"
    assert full.choices[0].message.content == text[: text.index(stop)]
    chunks = list(client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=24,
                                                        stop=stop, stream=True,
                                                        extra_body={"guardrail": {"threshold": 1.0}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text[: text.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("param", [
    {"tools": [{"type": "function", "function": {"name": "f"}}]},
    {"response_format": {"type": "json_object"}},
    {"logprobs": True},
    {"tool_choice": "auto"},
    {"frequency_penalty": 0.5},
    {"reasoning_effort": "high"},
])
def test_local_unsupported_parameter_is_422_naming_it(local: ServerThread, param: dict[str, Any]) -> None:
    name = next(iter(param))
    with pytest.raises(openai.UnprocessableEntityError) as err:
        client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=2,
                                              extra_body=param)
    assert name in str(err.value)
    body = httpx.post(local.url + "/v1/chat/completions", json={"messages": ask("hi"), **param}).json()
    assert body["error"]["param"] == name and body["error"]["code"] == "unsupported_parameter"


def test_local_n_above_one_is_422(local: ServerThread) -> None:
    with pytest.raises(openai.UnprocessableEntityError, match="n"):
        client(local).chat.completions.create(model="x", messages=ask("hi"), n=2)


def test_local_harmless_parameters_are_accepted(local: ServerThread) -> None:
    full = client(local).chat.completions.create(
        model="x", messages=ask("hi"), max_tokens=2, user="u", metadata={"k": "v"}, frequency_penalty=0,
        presence_penalty=0, logprobs=False, n=1, response_format={"type": "text"}, store=False)
    assert full.choices[0].finish_reason in ("stop", "length")


def test_local_model_is_the_served_id(local: ServerThread) -> None:
    full = client(local).chat.completions.create(model="whatever-you-like", messages=ask("hi"), max_tokens=2)
    assert full.model == "served-tiny"
    chunks = list(client(local).chat.completions.create(model="other", messages=ask("hi"), max_tokens=2,
                                                        stream=True))
    assert {c.model for c in chunks} == {"served-tiny"}


def test_local_usage_follows_the_openai_contract(local: ServerThread) -> None:
    async def run() -> tuple[list[Any], list[Any]]:
        async with aclient(local) as c:
            plain = [ch async for ch in await c.chat.completions.create(
                model="x", messages=ask("hi"), max_tokens=3, stream=True)]
            asked = [ch async for ch in await c.chat.completions.create(
                model="x", messages=ask("hi"), max_tokens=3, stream=True,
                stream_options={"include_usage": True})]
            return plain, asked

    plain, asked = asyncio.run(run())
    assert all(c.usage is None for c in plain)
    assert asked[-1].choices == [] and asked[-1].usage is not None
    assert asked[-1].usage.completion_tokens == 3 and asked[-1].usage.prompt_tokens > 0
    assert all(c.usage is None for c in asked[:-1])
    full = client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=3)
    assert full.usage is not None and full.usage.total_tokens == full.usage.prompt_tokens + 3


def test_local_seed_beyond_int64_is_422(local: ServerThread) -> None:
    for seed in (2**63, -(2**63) - 1, 10**30):
        response = httpx.post(local.url + "/v1/chat/completions",
                              json={"messages": ask("hi"), "seed": seed, "stream": True})
        assert response.status_code == 422 and "seed" in response.json()["error"]["message"]
    ok = client(local).chat.completions.create(model="x", messages=ask("hi"), max_tokens=2, seed=2**63 - 1)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_local_models_lists_the_served_model(local: ServerThread) -> None:
    models = client(local).models.list()
    assert [(m.id, m.object, m.owned_by) for m in models.data] == [("served-tiny", "model", "guardrail")]
    assert isinstance(models.data[0].created, int)
    assert client(local).models.retrieve("served-tiny").id == "served-tiny"
    raw = httpx.get(local.url + "/v1/models").json()
    assert raw["object"] == "list"


def test_the_docs_example_runs(local: ServerThread, capsys: pytest.CaptureFixture[str]) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "openai-compatibility.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        exec(block.replace("http://127.0.0.1:8000", local.url), {})
    assert "'intercepted': False" in capsys.readouterr().out


# -- trace context across the hop --------------------------------------------------------------------
def test_traceparent_reaches_the_upstream(proxy: ServerThread,
                                          upstream: tuple[ServerThread, list[dict[str, Any]]]) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    client(proxy).chat.completions.create(model="m", messages=ask("hello"), extra_headers=headers)
    sent = upstream[1][-1]["headers"]["traceparent"]
    _, sent_trace, sent_parent, _ = sent.split("-")
    assert sent_trace == trace_id and sent_parent != parent
    spans = {format(s.context.span_id, "016x"): s for s in exporter.get_finished_spans()}
    span = spans[sent_parent]  # the proxy's own client span, in the caller's trace
    ancestor = span.parent
    while ancestor is not None and format(ancestor.span_id, "016x") in spans:
        ancestor = spans[format(ancestor.span_id, "016x")].parent
    assert ancestor is not None and format(ancestor.span_id, "016x") == parent and ancestor.is_remote
    assert span.name == "chat m" and "hello" not in json.dumps(dict(span.attributes or {}))
    client(proxy).models.list(extra_headers=headers)
    assert upstream[1][-1]["headers"]["traceparent"].split("-")[1] == trace_id


# -- any chunking: what leaves is the upstream's text, never the flagged part --------------------------
WORDS = st.sampled_from(["dog", "park.", "caf\u00e9", "\u4e2d\u6587", "zero\u200bwidth", EMOJI, "e\u0301",
                         "line\nbreak", "bomb", "the"])


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(WORDS, min_size=1, max_size=14), cuts=st.lists(st.integers(0, 200), max_size=12))
def test_any_chunking_releases_the_upstream_text_exactly(proxy: ServerThread, words: list[str],
                                                         cuts: list[int]) -> None:
    text = "Sure " + " ".join(words)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    chunks = list(client(proxy).chat.completions.create(
        model="m", messages=ask("split:" + json.dumps(pieces)), stream=True,
        extra_body={"guardrail": {**STRICT, "action": "stop"}}))
    released = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = chunks[-1].choices[0].finish_reason
    if " bomb" in text:
        assert finish == "content_filter" and " bomb" not in released
        assert text.startswith(released)
    else:
        assert (released, finish) == (text, "stop")


@settings(max_examples=200, deadline=None)
@given(text=st.text("ab \n", max_size=30),
       stops=st.lists(st.text("ab \n", min_size=1, max_size=4), max_size=4),
       cuts=st.lists(st.integers(0, 30), max_size=8))
def test_stop_scanner_cuts_at_the_first_stop_whatever_the_pieces(text: str, stops: list[str],
                                                                 cuts: list[int]) -> None:
    scanner = StopScanner(stops)
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    out, stopped = "", False
    for a, b in itertools.pairwise(bounds):
        piece, stopped = scanner.push(text[a:b])
        out += piece
        if stopped:
            break
    if not stopped:
        out += scanner.flush()
    # the stop that completes first (ends first) wins, as generation meets it
    hits = [(i + len(s), i) for i, s in ((text.find(s), s) for s in stops) if i >= 0]
    assert stopped == bool(hits)
    assert out == (text[: min(hits)[1]] if hits else text)
