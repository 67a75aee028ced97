"""Moderation sessions: chunking invariance, release rules, errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.model.engine import SafetyModel
from guardrail.model.prompts import encode_text
from guardrail.model.session import ModerationSession, SessionClosedError
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.types import GuardConfig

TEXT = "Héllo wörld! 👋🏽 Multi-byte: 你好, naïve café.  Two  spaces,\ttab\nnewline 12345 don't."


def _chunks(text: str, cuts: list[int]) -> list[str]:
    points = sorted({min(c, len(text)) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, len(TEXT)), max_size=20))
def test_any_chunking_gives_the_same_tokens(tokenizer, cuts: list[int]) -> None:  # type: ignore[no-untyped-def]
    stream = IncrementalTokenizer(tokenizer)
    ids: list[int] = []
    for piece in _chunks(TEXT, cuts):
        ids += stream.feed(piece)
    ids += stream.flush()
    assert ids == encode_text(tokenizer, TEXT)
    assert stream.text_upto(len(ids)) == TEXT


def test_byte_at_a_time_utf8(tokenizer) -> None:  # type: ignore[no-untyped-def]
    stream = IncrementalTokenizer(tokenizer)
    ids: list[int] = []
    for byte in TEXT.encode():
        ids += stream.feed(bytes([byte]))
    ids += stream.flush()
    assert ids == encode_text(tokenizer, TEXT)


def _run_session(model: SafetyModel, chunks: list[str], config: GuardConfig) -> tuple[str, float]:
    session = ModerationSession(model, "Tell me something", config)
    released = ""
    for chunk in chunks:
        released += session.feed(chunk).released
    final = session.close()
    return released + final.released, final.score


def test_session_verdict_independent_of_chunking(tiny: SafetyModel) -> None:
    config = GuardConfig(threshold=1.0)
    whole_text, whole_score = _run_session(tiny, [TEXT], config)
    split_text, split_score = _run_session(tiny, _chunks(TEXT, [3, 4, 17, 40, 41, 60]), config)
    assert whole_text == split_text == TEXT
    assert abs(whole_score - split_score) < 1e-5


def test_session_cut_releases_nothing_flagged(tiny: SafetyModel) -> None:
    config = GuardConfig(threshold=0.0, tau=2, hold_back=0, strategy="periodic", period=4)
    session = ModerationSession(tiny, "hi", config)
    first = session.feed("one two three four five ")  # one check, at 4 tokens: streak 1
    assert first.released == "" and not first.intercepted and session.state.checks == 2
    second = session.feed("six seven eight nine ")  # the check at 8 tokens acts
    assert second.intercepted and second.released == "" and second.intercept_index == 0
    with pytest.raises(SessionClosedError, match="intercepted"):
        session.feed("more")


def test_session_work_is_proportional_to_the_chunk(tiny: SafetyModel) -> None:
    rows: list[int] = []
    handle = tiny.decoder.layers[0].register_forward_pre_hook(
        lambda _m, args, kwargs: rows.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True,
    )
    session = ModerationSession(tiny, "hi", GuardConfig(threshold=1.0))
    rows.clear()
    for _ in range(5):
        session.feed("alpha beta gamma ")
    handle.remove()
    assert max(rows) <= 5  # a chunk's few tokens plus one [CLS] row, never the whole text


def test_closed_session_rejects_chunks(tiny: SafetyModel) -> None:
    session = ModerationSession(tiny, "hi", GuardConfig(threshold=1.0))
    session.feed("hello")
    session.close()
    with pytest.raises(SessionClosedError):
        session.feed("again")
    with pytest.raises(SessionClosedError):
        session.close()
