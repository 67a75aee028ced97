"""Chunking invariants of moderation sessions, embedded and over HTTP, as hypothesis properties.

The same text fed in any chunking (mid-word, mid-emoji, mid multi-byte character, one byte
at a time, with empty chunks) must give the same tokens and the same final verdict as fed
whole, and the text released, concatenated, must be the input up to the cut. A stream that
drops, repeats or reorders a piece under some chunking would break one of these.

Release and intercept points are compared, with equality, to `tests.oracle.expected_outcome`:
the moderation contract computed from a whole-text tokenisation (checks on token positions,
never on chunk boundaries), not from the product's own incremental tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from guardrail.client import GuardrailClient
from guardrail.model.engine import SafetyModel
from guardrail.model.prompts import encode_text
from guardrail.model.session import ModerationSession
from guardrail.server import create_app
from guardrail.types import ChunkVerdict, GuardConfig
from tests.oracle import (
    Outcome,
    expected_outcome,
    keyword_model,
    scheduled,
    scripted_model,
    whole_text_tokens,
    words_of,
)
from tests.test_server_support import SAFE_PART, SCRIPT, UNSAFE_WORD, ServerThread, lax_settings, make_model

# Multi-byte characters, an emoji with a skin-tone modifier, a ZWJ family, CJK, combining marks.
TEXT = ("Héllo wörld! 👋🏽 family: 👨‍👩‍👧 你好世界, naïve café, e\u0301 — "
        "unbroken-hyphenated-words and  two  spaces\tand tabs\nand lines 12345.")
RAW = TEXT.encode()
HARMFUL_THEN_BENIGN = ("Sure. Step one: wire the bomb to the timer. Now some unrelated words about "
                       "gardens, tea, rain and long walks on the beach at dawn.")


def suite(examples: int, *, shrink: bool = True) -> settings:
    """Hypothesis settings; `shrink=False` reports the first failing example as found (fast)."""
    phases = [p for p in Phase if shrink or p is not Phase.shrink]
    return settings(max_examples=examples, deadline=None, phases=phases,
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
    """Flags any check that reads the keyword (a deterministic stand-in for a trained head)."""
    return keyword_model(tokenizer)


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


KEYWORD_CONFIGS = st.builds(
    GuardConfig, strategy=st.sampled_from(["each", "periodic"]), period=st.integers(1, 6),
    tau=st.integers(1, 3), hold_back=st.integers(0, 4), threshold=st.just(0.5))


@pytest.fixture(scope="module")
def window(tokenizer: Any) -> SafetyModel:
    """Flags only while the keyword is among the last 6 response tokens a check reads."""
    return keyword_model(tokenizer, span=6)


@pytest.mark.parametrize("hold_back", [0, 1, 3])
@pytest.mark.parametrize("tau", [1, 2])
@pytest.mark.parametrize("split", ["words", "chars"])
def test_fine_chunks_release_exactly_the_contract(
        keyword: SafetyModel, tokenizer: Any, hold_back: int, tau: int, split: str) -> None:
    """Word or character chunks with a check at every token: release equals the contract."""
    config = GuardConfig(strategy="each", tau=tau, hold_back=hold_back, threshold=0.5)
    chunks = words_of(SCRIPT) if split == "words" else list(SCRIPT)
    released, final = run_embedded(keyword, [c.encode() for c in chunks], config)
    expected = expected_outcome(tokenizer, SCRIPT, config)
    assert expected.intercepted and len(expected.released) > len(SAFE_PART) // 2  # non-trivial
    assert (final.intercepted, final.intercept_index, released) == (
        expected.intercepted, expected.intercept_index, expected.released)


@suite(40, shrink=False)
@given(chunks=chunkings(SCRIPT.encode()), config=KEYWORD_CONFIGS)
def test_embedded_intercept_is_chunking_invariant(
        keyword: SafetyModel, tokenizer: Any, chunks: list[bytes], config: GuardConfig) -> None:
    """Any chunking: the same intercept index and exactly the text before it, minus the hold-back."""
    released, final = run_embedded(keyword, chunks, config)
    expected = expected_outcome(tokenizer, SCRIPT, config)
    assert (final.intercepted, final.intercept_index, released) == (
        expected.intercepted, expected.intercept_index, expected.released)


@pytest.mark.parametrize("split", ["whole", "two", "words"])
def test_flagged_span_followed_by_benign_text_is_caught(
        window: SafetyModel, tokenizer: Any, split: str) -> None:
    """A harmful sentence and a benign one in one chunk: the check at the flagged position still runs."""
    config = GuardConfig(strategy="periodic", period=2, tau=1, hold_back=2, threshold=0.5)
    chunks = {"whole": [HARMFUL_THEN_BENIGN], "two": [HARMFUL_THEN_BENIGN[:20], HARMFUL_THEN_BENIGN[20:]],
              "words": words_of(HARMFUL_THEN_BENIGN)}[split]
    released, final = run_embedded(window, [c.encode() for c in chunks], config)
    expected = expected_outcome(tokenizer, HARMFUL_THEN_BENIGN, config, span=6)
    assert expected.intercepted and UNSAFE_WORD not in expected.released
    assert final.intercepted and UNSAFE_WORD not in released
    assert (final.intercept_index, released) == (expected.intercept_index, expected.released)


def scripted_expectation(tokenizer: Any, text: str, scores: list[float], config: GuardConfig) -> Outcome:
    """The contract for scripted scores: the i-th checked position gets the i-th score."""
    ids, ends = whole_text_tokens(tokenizer, text)
    n = len(ids)
    positions = scheduled(config.strategy, config.period, n)
    if positions[-1] != n:
        positions.append(n)
    streak, released = 0, 0
    for position, score in zip(positions, [*scores, *[0.0] * len(positions)], strict=False):
        flagged = score >= config.threshold
        streak = streak + 1 if flagged else 0
        if streak >= config.tau or (position == n and flagged):
            return Outcome(True, released, text[: ends[released - 1]] if released else "")
        if not flagged:
            released = max(released, position - config.hold_back)
    return Outcome(False, None, text)


@suite(40, shrink=False)
@given(scores=st.lists(st.floats(0, 1), min_size=12, max_size=12), hold_back=st.integers(0, 6),
       tau=st.integers(1, 3), threshold=st.floats(0.05, 0.95),
       cuts=st.lists(st.integers(0, len(SCRIPT)), min_size=1, max_size=10))
def test_session_release_follows_the_scores_position_by_position(
        tokenizer: Any, scores: list[float], hold_back: int, tau: int, threshold: float,
        cuts: list[int]) -> None:
    """Whatever the scores and the chunking: shown text is exactly what safe checks covered,
    minus the hold-back, and the cut falls where the scores say."""
    config = GuardConfig(threshold=threshold, tau=tau, hold_back=hold_back)  # periodic, period 4
    assert len(whole_text_tokens(tokenizer, SCRIPT)[0]) % config.period  # no check doubles the final one
    model = scripted_model(tokenizer, [0.0, *scores])  # the prompt's check first
    released, final = run_embedded(model, byte_chunks(SCRIPT.encode(), cuts), config)
    expected = scripted_expectation(tokenizer, SCRIPT, scores, config)
    assert (final.intercepted, final.intercept_index, released) == (
        expected.intercepted, expected.intercept_index, expected.released)


# -- the same through the HTTP API -------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(tokenizer: Any) -> Iterator[tuple[str, str]]:
    with ServerThread(create_app(lax_settings(), make_model(tokenizer, keyword=False))) as plain_srv, \
            ServerThread(create_app(lax_settings(), keyword_model(tokenizer))) as keyword_srv:
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


@pytest.mark.parametrize("hold_back", [0, 3])
def test_http_word_chunks_release_exactly_the_contract(
        servers: tuple[str, str], tokenizer: Any, hold_back: int) -> None:
    config = {"strategy": "each", "tau": 1, "hold_back": hold_back}
    released, final = run_remote(servers[1], [w.encode() for w in words_of(SCRIPT)], config)
    expected = expected_outcome(tokenizer, SCRIPT, GuardConfig(**config))
    assert expected.intercepted and expected.released
    assert (final.intercepted, final.intercept_index, released) == (
        expected.intercepted, expected.intercept_index, expected.released)


@suite(12, shrink=False)
@given(chunks=chunkings(SCRIPT.encode()), config=KEYWORD_CONFIGS)
def test_http_intercept_is_chunking_invariant(
        servers: tuple[str, str], tokenizer: Any, chunks: list[bytes], config: GuardConfig) -> None:
    released, final = run_remote(servers[1], chunks, config.model_dump(exclude={"threshold"}))
    expected = expected_outcome(tokenizer, SCRIPT, config)
    assert (final.intercepted, final.intercept_index, released) == (
        expected.intercepted, expected.intercept_index, expected.released)
