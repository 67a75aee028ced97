"""Chunking invariants of moderation sessions, embedded and over HTTP, as hypothesis properties.

The same text fed in any chunking (mid-word, mid-emoji, mid multi-byte character, one byte
at a time, with empty chunks) must give the same tokens and the same final verdict as fed
whole, and the text released, concatenated, must be the input up to the cut. A stream that
drops, repeats or reorders a piece under some chunking would break one of these.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.client import GuardrailClient
from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.prompts import encode_text
from guardrail.model.session import ModerationSession
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.server import Settings, create_app
from guardrail.types import ChunkVerdict, GuardConfig
from tests.test_server_support import SCRIPT, UNSAFE_WORD, ServerThread, make_model

# Multi-byte characters, an emoji with a skin-tone modifier, a ZWJ family, CJK, combining marks.
TEXT = ("Héllo wörld! 👋🏽 family: 👨‍👩‍👧 你好世界, naïve café, e\u0301 — "
        "unbroken-hyphenated-words and  two  spaces\tand tabs\nand lines 12345.")
RAW = TEXT.encode()
CUT = SCRIPT.index(UNSAFE_WORD)


def suite(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def byte_chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split at the given byte offsets; repeated offsets make empty chunks."""
    points = sorted(min(c, len(data)) for c in cuts)
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    return [*out, data[last:]]


def chunkings(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """Random byte cuts (mid-character included), one byte at a time, or whole."""
    return st.one_of(
        st.lists(st.integers(0, len(data)), max_size=30).map(lambda cuts: byte_chunks(data, cuts)),
        st.just([data[i : i + 1] for i in range(len(data))]),
        st.just([data]),
    )


def run_embedded(model: SafetyModel, chunks: list[bytes], config: GuardConfig) -> tuple[str, ChunkVerdict]:
    session = ModerationSession(model, "Tell me something", config)
    released = ""
    for chunk in chunks:
        verdict = session.feed(chunk)
        released += verdict.released
        if verdict.intercepted:
            return released, verdict
    final = session.close()
    return released + final.released, final


# -- embedded session ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain(tokenizer: Any) -> SafetyModel:
    return make_model(tokenizer, keyword=False)


@pytest.fixture(scope="module")
def keyword(tokenizer: Any) -> SafetyModel:
    return make_model(tokenizer)


@pytest.fixture(scope="module")
def whole(plain: SafetyModel) -> tuple[str, ChunkVerdict]:
    return run_embedded(plain, [RAW], GuardConfig(threshold=1.0, hold_back=2))


@suite(40)
@given(chunks=chunkings(RAW), hold_back=st.integers(0, 4))
def test_embedded_any_chunking_same_tokens_verdict_and_text(
        plain: SafetyModel, whole: tuple[str, ChunkVerdict], tokenizer: Any, chunks: list[bytes],
        hold_back: int) -> None:
    released, final = run_embedded(plain, chunks, GuardConfig(threshold=1.0, hold_back=hold_back))
    assert released == TEXT
    assert final.tokens == whole[1].tokens == len(encode_text(tokenizer, TEXT))
    assert final.label == whole[1].label
    assert final.score == pytest.approx(whole[1].score, abs=1e-5)


@suite(40)
@given(chunks=chunkings(SCRIPT.encode()), hold_back=st.integers(0, 4), tau=st.integers(1, 3))
def test_embedded_released_text_is_the_input_up_to_the_cut(
        keyword: SafetyModel, chunks: list[bytes], hold_back: int, tau: int) -> None:
    released, final = run_embedded(keyword, chunks, GuardConfig(threshold=0.5, tau=tau, hold_back=hold_back))
    assert final.intercepted  # the keyword is always caught, whatever the chunking ...
    assert SCRIPT.startswith(released)  # ... nothing dropped, repeated or reordered before it ...
    assert len(released) <= CUT  # ... and not one character of the flagged span shown


class ScriptedSafetyModel(SafetyModel):
    """Real passes; each [CLS] score is taken from a list, to drive the session's policy."""

    scores: list[float]

    def step_many(self, requests: list[StepRequest]) -> list[StepOutput]:
        outputs = super().step_many(requests)
        for r, out in zip(requests, outputs, strict=True):
            if r.check is not None:
                out.score = self.scores.pop(0) if self.scores else 0.0
        return outputs


@suite(60)
@given(scores=st.lists(st.floats(0, 1), min_size=12, max_size=12), hold_back=st.integers(0, 6),
       tau=st.integers(1, 3), threshold=st.floats(0.05, 0.95),
       cuts=st.lists(st.integers(0, len(RAW)), min_size=1, max_size=10))
def test_session_never_releases_past_the_last_safe_check(
        plain: SafetyModel, scores: list[float], hold_back: int, tau: int, threshold: float,
        cuts: list[int]) -> None:
    """Whatever the scores: shown text is covered by a safe check, minus the hold-back margin."""
    model = ScriptedSafetyModel(plain.lm, plain.tokenizer, plain.head, name="scripted")
    model.scores = [0.0, *scores]  # the prompt's check first
    session = ModerationSession(model, "Tell me something", GuardConfig(threshold=threshold, tau=tau,
                                                                        hold_back=hold_back))
    mirror = IncrementalTokenizer(plain.tokenizer)  # the same tokens, to map counts to text
    released, last_safe, seen = "", 0, 0
    for chunk in byte_chunks(RAW, cuts):
        mirror.feed(chunk)
        verdict = session.feed(chunk)
        released += verdict.released
        checked = verdict.tokens > seen
        seen = verdict.tokens
        if checked and verdict.score < threshold and not verdict.intercepted:
            last_safe = verdict.tokens
        assert TEXT.startswith(released)
        assert len(released) <= len(mirror.text_upto(max(0, last_safe - hold_back)))
        if verdict.intercepted:
            assert mirror.text_upto(verdict.intercept_index or 0) == released
            break


# -- the same through the HTTP API -------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(tokenizer: Any) -> Iterator[tuple[str, str]]:
    with ServerThread(create_app(Settings(), make_model(tokenizer, keyword=False))) as plain_srv, \
            ServerThread(create_app(Settings(), make_model(tokenizer))) as keyword_srv:
        yield plain_srv.url, keyword_srv.url


def run_remote(url: str, chunks: list[bytes], config: dict[str, Any]) -> tuple[str, ChunkVerdict]:
    with GuardrailClient(url, config=GuardConfig(**config), retries=0) as client, \
            client.session("Tell me something") as session:
        assert session.degraded is None
        released = ""
        for chunk in chunks:  # bytes: the client decodes them incrementally, as from a socket
            verdict = session.feed(chunk)
            released += verdict.released
            if verdict.intercepted:
                return released, verdict
        final = session.close()
        return released + final.released, final


@pytest.fixture(scope="module")
def remote_whole(servers: tuple[str, str]) -> tuple[str, ChunkVerdict]:
    return run_remote(servers[0], [RAW], {"threshold": 1.0, "hold_back": 2})


@suite(12)
@given(chunks=chunkings(RAW), hold_back=st.integers(0, 4))
def test_http_any_chunking_same_tokens_verdict_and_text(
        servers: tuple[str, str], remote_whole: tuple[str, ChunkVerdict], whole: tuple[str, ChunkVerdict],
        chunks: list[bytes], hold_back: int) -> None:
    released, final = run_remote(servers[0], chunks, {"threshold": 1.0, "hold_back": hold_back})
    assert released == TEXT
    assert final.tokens == remote_whole[1].tokens == whole[1].tokens
    assert final.label == remote_whole[1].label
    assert final.score == pytest.approx(remote_whole[1].score, abs=1e-5)
    assert final.score == pytest.approx(whole[1].score, abs=1e-4)  # the server equals the embedded engine


@suite(12)
@given(chunks=chunkings(SCRIPT.encode()), hold_back=st.integers(0, 4), tau=st.integers(1, 3))
def test_http_released_text_is_the_input_up_to_the_cut(
        servers: tuple[str, str], chunks: list[bytes], hold_back: int, tau: int) -> None:
    released, final = run_remote(servers[1], chunks, {"threshold": 0.5, "tau": tau, "hold_back": hold_back})
    assert final.intercepted
    assert SCRIPT.startswith(released) and len(released) <= CUT
