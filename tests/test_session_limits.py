"""A failed chunk changes no state; every chunk's cost is bounded (pending text, token limit)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.model import tokenstream
from guardrail.model.prompts import InputError, LimitError
from guardrail.model.session import ModerationSession
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.server.batcher import Batcher
from guardrail.server.moderation import SteppedSession
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChunkVerdict, GuardConfig
from tests.keyword_model import KeywordSafetyModel, make_keyword_model
from tests.test_chunking_invariance import SCRIPT, split

CONFIG = GuardConfig(threshold=0.5, tau=2, hold_back=1, strategy="periodic", period=3)
CHUNKS = split(SCRIPT, [7, 30, 31, 64, 90, 140])


@pytest.fixture(scope="module")
def keyword(tokenizer: Any) -> KeywordSafetyModel:
    return make_keyword_model(tokenizer)


def outcome(verdicts: list[ChunkVerdict]) -> tuple[str, bool, int | None, int]:
    last = verdicts[-1]
    return "".join(v.released for v in verdicts), last.intercepted, last.intercept_index, last.tokens


def run_clean(model: Any) -> tuple[str, bool, int | None, int]:
    session = ModerationSession(model, "Tell me a story", CONFIG)
    verdicts = []
    for chunk in CHUNKS:
        verdicts.append(session.feed(chunk))
        if session.closed:
            return outcome(verdicts)
    verdicts.append(session.close())
    return outcome(verdicts)


def feed_with_failures(session: ModerationSession,
                       fail: Callable[[], Any]) -> tuple[str, bool, int | None, int]:
    """Feed every chunk, each preceded by a failing attempt; the failures must leave no trace."""
    verdicts = []
    for chunk in CHUNKS:
        with pytest.raises((InputError, RuntimeError)):
            fail()
        verdicts.append(session.feed(chunk))
        if session.closed:
            return outcome(verdicts)
    with pytest.raises((InputError, RuntimeError)):
        fail()
    verdicts.append(session.close())
    return outcome(verdicts)


@pytest.mark.parametrize("bad", ["\ud800", "tail \udfff", "ok \ud83d", "\udc80 head"])
def test_lone_surrogate_is_refused_and_changes_nothing(keyword: KeywordSafetyModel, bad: str) -> None:
    session = ModerationSession(keyword, "Tell me a story", CONFIG)
    with pytest.raises(InputError, match="surrogate"):
        session.feed(bad)
    assert feed_with_failures(session, lambda: session.feed(bad)) == run_clean(keyword)


def test_tokenizer_failure_changes_nothing(keyword: KeywordSafetyModel,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    session = ModerationSession(keyword, "Tell me a story", CONFIG)

    def broken_feed() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(session.state.tokens, "_commit", _raise)
            session.feed(" and more words follow here ")

    assert feed_with_failures(session, broken_feed) == run_clean(keyword)


def test_forward_failure_changes_nothing(keyword: KeywordSafetyModel,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    session = ModerationSession(keyword, "Tell me a story", CONFIG)

    def broken_pass() -> None:
        with monkeypatch.context() as patch:
            patch.setattr(keyword, "step", _raise)
            session.feed(" several more words so that a check is due ")

    assert feed_with_failures(session, broken_pass) == run_clean(keyword)


def _raise(*_args: Any, **_kwargs: Any) -> Any:
    raise RuntimeError("injected failure")


def test_bad_chunk_on_the_sidecar_changes_nothing(keyword: KeywordSafetyModel) -> None:
    async def main() -> tuple[str, bool, int | None, int]:
        batcher, text = Batcher(keyword, max_batch=4, max_wait_ms=1), TokenizerThread()
        batcher.start()
        try:
            session = SteppedSession(batcher, text, CONFIG)
            await session.start("Tell me a story")
            verdicts = []
            for chunk in CHUNKS:
                with pytest.raises(InputError, match="surrogate"):
                    await session.feed(chunk + "\ud800")
                verdicts.append(await session.feed(chunk))
                if session.closed:
                    return outcome(verdicts)
            verdicts.append(await session.close())
            return outcome(verdicts)
        finally:
            batcher.stop()
            text.stop()

    assert asyncio.run(main()) == run_clean(keyword)


def test_token_limit_holds_on_chunks_and_at_close(keyword: KeywordSafetyModel) -> None:
    config = GuardConfig(threshold=1.0, hold_back=0)  # nothing is flagged: only the limit acts
    session = ModerationSession(keyword, "hi", config, max_tokens=6)
    released = session.feed("one two three four ").released
    with pytest.raises(LimitError, match="limit of 6 tokens"):
        session.feed("five six seven eight nine ")  # refused whole: nothing of it is kept
    released += session.feed("five").released  # " four" is committed once "five" starts
    with pytest.raises(LimitError):
        session.feed(" and more words")  # again refused whole
    final = session.close()  # what was accepted still closes cleanly
    assert released + final.released == "one two three four five"
    assert final.tokens == 5 and not final.intercepted
    tail = ModerationSession(keyword, "hi", config, max_tokens=3)
    tail.feed("one two ")
    tail.feed("threefourfivesixseveneight")  # one pending word: no tokens yet
    with pytest.raises(LimitError):
        tail.close()  # the tail would cross the limit: close refuses, the session stays open
    assert not tail.closed
    with pytest.raises(LimitError):
        tail.close()  # and refuses again: the refused tail was not dropped


def test_pending_text_stays_bounded(tokenizer: Any) -> None:
    stream = IncrementalTokenizer(tokenizer)
    ids = []
    for _ in range(200):
        ids += stream.feed("x" * 50)  # one 10,000-character word
        assert len(stream.pending) < 2 * tokenstream.RUN_CAP
    for _ in range(50):
        ids += stream.feed(" " * 50)  # and a long run of spaces
        assert len(stream.pending) < 2 * tokenstream.RUN_CAP
    assert ids and stream.text_upto(len(ids)) == stream.raw[: stream.token_ends[-1]]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from("ab  \n\u200b\u0301"), min_size=1, max_size=60),
       cuts=st.lists(st.integers(0, 60), max_size=12))
def test_fixed_cuts_inside_long_runs_are_chunking_invariant(tokenizer: Any, monkeypatch: pytest.MonkeyPatch,
                                                            text: str, cuts: list[int]) -> None:
    monkeypatch.setattr(tokenstream, "RUN_CAP", 5)  # short runs already hit the cap

    def tokens(chunks: list[str]) -> tuple[list[int], list[int]]:
        stream = IncrementalTokenizer(tokenizer)
        ids = [i for chunk in chunks for i in stream.feed(chunk)] + stream.flush()
        assert stream.text == text
        return ids, stream.token_ends

    assert tokens(split(text, cuts)) == tokens([text]) == tokens(list(text))
