"""The prompt check folded with the first response words: the same verdicts as checking apart.

`ModerationState.start_with(prompt, first)` runs the prompt's prefill, its [CLS] check, the
first response tokens and their scheduled checks in one pass. Whatever the text, the chunking
and the config, every verdict, the intercept index and the released text must equal
`start(prompt)` then `feed(first)`; through the proxy, whatever the upstream's timing, the
client sees what the plain session releases; a slow upstream does not hold up the verdict.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from guardrail.model import session as session_module
from guardrail.model.plans import Plan, run_in_place
from guardrail.model.prompts import LimitError
from guardrail.model.session import ModerationSession, ModerationState
from guardrail.server import create_app
from guardrail.server.batcher import Batcher
from guardrail.server.driver import run_batched
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChunkVerdict, GuardConfig
from tests.conftest import make_tiny
from tests.keyword_model import KeywordSafetyModel, make_keyword_model
from tests.test_chunking_invariance import BENIGN, CUT, SCRIPT, chunkings
from tests.test_server_support import ServerThread, lax_settings

PROMPT = [{"role": "user", "content": "Tell me something interesting."}]

configs = st.builds(
    GuardConfig,
    threshold=st.just(0.5),
    strategy=st.sampled_from(["each", "periodic", "annealing", "first"]),
    period=st.integers(1, 6),
    tau=st.integers(1, 3),
    hold_back=st.integers(0, 4),
)


@pytest.fixture(scope="module")
def keyword(tokenizer: Any) -> KeywordSafetyModel:
    return make_keyword_model(tokenizer)


Trace = list[tuple[str, bool, int | None, str, int]]


def _drive(state: ModerationState, first: Iterator[ChunkVerdict], rest: list[str]) -> tuple[Trace, int, str]:
    """Feed the rest after the first chunk's verdict; every verdict as (released, intercepted,
    index, label, tokens), the checks applied and all released text."""
    trace: Trace = []
    for verdict in first:
        trace.append((verdict.released, verdict.intercepted, verdict.intercept_index, verdict.label,
                      verdict.tokens))
    for chunk in rest:
        if state.closed:
            break
        v = run_in_place(state.model, state.feed(chunk))
        trace.append((v.released, v.intercepted, v.intercept_index, v.label, v.tokens))
    if not state.closed:
        v = run_in_place(state.model, state.close())
        trace.append((v.released, v.intercepted, v.intercept_index, v.label, v.tokens))
    return trace, state.checks, state.released_text


def plain(model: Any, config: GuardConfig, first: str, rest: list[str]) -> tuple[Any, ...]:
    state = ModerationState(model, config)
    prompt = run_in_place(model, state.start(PROMPT))
    chunk = run_in_place(model, state.feed(first))
    return (prompt.label, prompt.score), *_drive(state, iter([chunk]), rest)


def folded(model: Any, config: GuardConfig, first: str, rest: list[str]) -> tuple[Any, ...]:
    state = ModerationState(model, config)
    prompt, chunk = run_in_place(model, state.start_with(PROMPT, first))
    if chunk is None:  # nothing folded: the caller feeds it, as the proxy does
        chunk = run_in_place(model, state.feed(first))
    return (prompt.label, prompt.score), *_drive(state, iter([chunk]), rest)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.sampled_from([SCRIPT, BENIGN * 2, "", " bomb" + BENIGN]), data=st.data(), config=configs)
def test_folded_start_equals_start_then_feed(keyword: KeywordSafetyModel, text: str, data: st.DataObject,
                                            config: GuardConfig) -> None:
    chunks = data.draw(chunkings(text)) if text else [""]
    j = data.draw(st.integers(1, len(chunks)))
    first, rest = "".join(chunks[:j]), chunks[j:]
    want = plain(keyword, config, first, rest)
    assert folded(keyword, config, first, rest) == want
    released = want[3]
    assert text.startswith(released)
    if " bomb" in text:
        assert len(released) <= text.index(" bomb")  # nothing of the flagged span, folded or not


def test_folded_pass_scores_match_separate_passes(tokenizer: Any) -> None:
    """On a model with lively [CLS] adapters the folded pass computes the same numbers: the
    prompt query sees the prompt only, each response query its own prefix."""
    model = make_tiny(tokenizer)
    config = GuardConfig(threshold=1.0, strategy="each", hold_back=1)  # random scores: never cut
    first = "Sure, here is a short story about a dog"
    a = ModerationState(model, config)
    prompt_a = run_in_place(model, a.start(PROMPT))
    chunk_a = run_in_place(model, a.feed(first))
    b = ModerationState(model, config)
    prompt_b, chunk_b = run_in_place(model, b.start_with(PROMPT, first))
    assert chunk_b is not None
    assert prompt_b.score == pytest.approx(prompt_a.score, abs=1e-5)
    assert prompt_b.categories.keys() == prompt_a.categories.keys()
    for name, value in prompt_a.categories.items():
        assert prompt_b.categories[name] == pytest.approx(value, abs=1e-5)
    assert chunk_b.score == pytest.approx(chunk_a.score, abs=1e-5)
    assert (chunk_b.released, chunk_b.tokens, b.checks) == (chunk_a.released, chunk_a.tokens, a.checks)
    assert b.cache.get_seq_length() == a.cache.get_seq_length()  # no [CLS] row stays in the cache
    later = " and a red ball in the park."
    assert run_in_place(model, b.feed(later)).score == pytest.approx(run_in_place(model, a.feed(later)).score,
                                                                     abs=1e-5)


def test_a_first_chunk_feed_would_refuse_is_not_folded(keyword: KeywordSafetyModel) -> None:
    """Over the session's token limit: nothing folded, nothing changed; `feed` then refuses."""
    state = ModerationState(keyword, GuardConfig(threshold=0.5), max_tokens=3)
    prompt, chunk = run_in_place(keyword, state.start_with(PROMPT, BENIGN))
    assert chunk is None and prompt.label == "safe"
    assert (state.response, state.tokens.text, state.checks) == ([], "", 1)
    with pytest.raises(LimitError):
        run_in_place(keyword, state.feed(BENIGN))
    assert run_in_place(keyword, state.feed("Hi")).tokens <= 3


def test_folded_start_through_the_batcher(keyword: KeywordSafetyModel) -> None:
    """The batched driver runs the folded plan the same as the in-place one."""
    config = GuardConfig(threshold=0.5, tau=1, hold_back=2, period=3)
    first = SCRIPT[:60]

    async def batched() -> tuple[Any, ...]:
        batcher = Batcher(keyword, max_wait_ms=1)
        text = TokenizerThread()
        batcher.start()
        try:
            state = ModerationState(keyword, config)
            prompt, chunk = await run_batched(batcher, text, state.start_with(PROMPT, first))
            assert chunk is not None
            rest = await run_batched(batcher, text, state.feed(SCRIPT[60:]))
            return prompt.score, chunk.released, rest.released, rest.intercept_index, state.checks
        finally:
            batcher.stop()
            text.stop()

    got = asyncio.run(batched())
    state = ModerationState(keyword, config)
    prompt, chunk = run_in_place(keyword, state.start_with(PROMPT, first))
    assert chunk is not None
    rest = run_in_place(keyword, state.feed(SCRIPT[60:]))
    assert got == (prompt.score, chunk.released, rest.released, rest.intercept_index, state.checks)
    assert rest.intercepted and len(chunk.released + rest.released) <= CUT


# -- through the proxy, with a real upstream whose timing varies ----------------------------------
class Script:
    """What the scripted upstream answers next: its text's pieces, the delay before each,
    and a delay before the first."""

    pieces: ClassVar[list[str]] = []
    delays: ClassVar[list[float]] = []
    before_s = 0.0


def timed_upstream() -> Starlette:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({"id": "up", "model": "up", "choices": [choice]}) + "\n\n"

    async def completions(request: Request) -> Response:
        await request.body()
        pieces, delays, before = list(Script.pieces), list(Script.delays), Script.before_s

        async def stream() -> AsyncIterator[str]:
            await asyncio.sleep(before)
            yield chunk({"role": "assistant", "content": ""})
            for piece, delay in zip(pieces, delays, strict=True):
                if delay:
                    await asyncio.sleep(delay)
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


@pytest.fixture(scope="module")
def upstream() -> Iterator[ServerThread]:
    server = ServerThread(timed_upstream())
    with server:
        yield server


@pytest.fixture(scope="module")
def app(keyword: KeywordSafetyModel, upstream: ServerThread) -> Starlette:
    return create_app(lax_settings(upstream=upstream.url + "/v1"), keyword)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def proxy(app: Starlette) -> Iterator[ServerThread]:
    server = ServerThread(app)
    with server:
        yield server


@pytest.fixture
def folds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether each prompt check folded response text into its pass."""
    seen: list[bool] = []
    original = session_module.ModerationState.start_with

    def spy(self: ModerationState, prompt: Any, first: str | bytes) -> Plan[Any]:
        result = yield from original(self, prompt, first)
        seen.append(result[1] is not None)
        return result

    monkeypatch.setattr(session_module.ModerationState, "start_with", spy)
    return seen


def _proxied(proxy: ServerThread, messages: list[dict[str, str]], config: dict[str, Any]) -> tuple[str, Any]:
    body = {"model": "m", "stream": True, "messages": messages, "guardrail": config}
    with httpx.Client(timeout=60) as c, c.stream("POST", proxy.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    chunks = [json.loads(ln) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    return text, chunks[-1]["guardrail"]


STRICT = {"tau": 1, "hold_back": 2, "threshold": 0.5, "action": "stop"}


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=st.sampled_from([SCRIPT, BENIGN * 2]),
       delays=st.lists(st.sampled_from([0.0, 0.0, 0.002, 0.02]), min_size=1, max_size=60),
       period=st.integers(1, 5))
def test_proxy_releases_what_the_plain_session_does_whatever_the_timing(
        keyword: KeywordSafetyModel, proxy: ServerThread, folds: list[bool], text: str,
        delays: list[float], period: int) -> None:
    words = text.split(" ")
    Script.pieces = [words[0]] + [" " + w for w in words[1:]]
    Script.delays = [delays[i % len(delays)] for i in range(len(Script.pieces))]
    Script.before_s = 0.0
    config = {**STRICT, "period": period}
    released, info = _proxied(proxy, PROMPT, config)
    session = ModerationSession(keyword, PROMPT, GuardConfig(**config))
    verdict = session.feed(text)
    if not verdict.intercepted:
        verdict = session.close()
    assert released == session.released_text
    assert info["intercepted"] == verdict.intercepted
    if verdict.intercepted:
        assert info["intercept"]["index"] == verdict.intercept_index
        assert len(released) <= CUT


def test_fast_upstream_folds_and_slow_one_does_not(keyword: KeywordSafetyModel, app: Starlette,
                                                   proxy: ServerThread, folds: list[bool]) -> None:
    """Where a pass of its own costs more than waiting, the fold is taken when the words come in
    time, and not waited for otherwise (without the first half, this file's proxy test could
    pass without ever folding)."""
    words = (BENIGN * 2).split(" ")
    Script.pieces = [words[0]] + [" " + w for w in words[1:]]
    Script.delays = [0.0] * len(Script.pieces)
    batcher = app.state.guardrail.batcher
    keyword.delay_s = 0.3  # a slow model: every pass costs 300 ms, as the estimate says
    try:
        batcher._small_pass_ewma_s = 0.3
        Script.before_s = 0.0
        assert _proxied(proxy, PROMPT, STRICT)[0] == BENIGN * 2
        batcher._small_pass_ewma_s = 0.3
        Script.before_s = 1.0
        started = time.perf_counter()
        assert _proxied(proxy, PROMPT, STRICT)[0] == BENIGN * 2
        assert time.perf_counter() - started > 1.0
    finally:
        keyword.delay_s = 0.0
    assert folds == [True, False]


def test_slow_upstream_does_not_hold_up_a_flagged_prompt(proxy: ServerThread) -> None:
    """The prompt check waits for the first words at most a bounded time; a flagged prompt is
    answered long before a slow upstream's first word."""
    Script.pieces, Script.delays, Script.before_s = ["Sure."], [0.0], 5.0
    started = time.perf_counter()
    released, info = _proxied(proxy, [{"role": "user", "content": "How do I build a bomb?"}], STRICT)
    assert released == "" and info["intercept"]["stage"] == "prompt"
    assert time.perf_counter() - started < 4.0
