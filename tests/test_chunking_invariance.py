"""Checks sit on token positions: how a caller splits its text changes no verdict and no cut.

Hypothesis splits the same text every way (one chunk, one character at a time, empty
chunks, random cuts); the released text, the intercept flag and the intercept index must
equal those of the whole text sent at once, and nothing from the flagged span may be shown.
The same holds through the sidecar's batcher, where many sessions share passes.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.model.session import ModerationSession
from guardrail.server.batcher import Batcher
from guardrail.server.moderation import SteppedSession
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import GuardConfig
from tests.keyword_model import KeywordSafetyModel, make_keyword_model

HARMFUL = ("Sure, here is the plan. First you take the pipe and fill it, then the bomb is sealed"
           " with caps and a fuse goes in the drilled hole, and you wait for the right moment.")
BENIGN = " Anyway, the weather today is lovely and the park is full of dogs."
SCRIPT = HARMFUL + BENIGN
CUT = SCRIPT.index(" bomb")


@pytest.fixture(scope="module")
def keyword(tokenizer: Any) -> KeywordSafetyModel:
    return make_keyword_model(tokenizer)


def split(text: str, cuts: list[int]) -> list[str]:
    """Cut at the given offsets; repeated offsets give empty chunks."""
    points = sorted(min(c, len(text)) for c in cuts)
    pieces, last = [], 0
    for p in points:
        pieces.append(text[last:p])
        last = p
    pieces.append(text[last:])
    return pieces


def chunkings(text: str) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        st.just([text]),
        st.just(list(text)),
        st.just(text.split(" ")).map(lambda words: [w + " " for w in words[:-1]] + words[-1:]),
        st.lists(st.integers(0, len(text)), max_size=30).map(lambda cuts: split(text, cuts)),
        st.lists(st.integers(0, len(text)), max_size=8).map(lambda cuts: ["", *split(text, cuts), ""]),
    )


configs = st.builds(
    GuardConfig,
    threshold=st.just(0.5),
    strategy=st.sampled_from(["each", "periodic", "annealing", "first"]),
    period=st.integers(1, 6),
    tau=st.integers(1, 3),
    hold_back=st.integers(0, 4),
)

Outcome = tuple[str, bool, int | None, int]


def run_embedded(model: Any, chunks: list[str], config: GuardConfig) -> Outcome:
    session = ModerationSession(model, "Tell me something interesting.", config)
    released = ""
    for chunk in chunks:
        verdict = session.feed(chunk)
        released += verdict.released
        if verdict.intercepted:
            return released, True, verdict.intercept_index, session.state.checks
    final = session.close()
    return released + final.released, final.intercepted, final.intercept_index, session.state.checks


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=chunkings(SCRIPT), config=configs)
def test_flagged_text_is_cut_at_the_same_token_whatever_the_chunking(
        keyword: KeywordSafetyModel, chunks: list[str], config: GuardConfig) -> None:
    whole = run_embedded(keyword, [SCRIPT], config)
    got = run_embedded(keyword, chunks, config)
    released, intercepted, index, checks = got
    assert intercepted and whole[1]
    assert (released, index, checks) == (whole[0], whole[2], whole[3])
    assert SCRIPT.startswith(released) and len(released) <= CUT  # not one character of the flagged span


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunks=chunkings(BENIGN * 3), config=configs)
def test_safe_text_is_released_whole_whatever_the_chunking(
        keyword: KeywordSafetyModel, chunks: list[str], config: GuardConfig) -> None:
    released, intercepted, _, checks = run_embedded(keyword, chunks, config)
    assert released == BENIGN * 3 and not intercepted
    assert checks == run_embedded(keyword, [BENIGN * 3], config)[3]


def test_one_chunk_gets_every_scheduled_check_in_one_pass(keyword: KeywordSafetyModel) -> None:
    """A coarse chunk is checked at each scheduled position, not once at its end (the bypass)."""
    passes: list[int] = []
    original = keyword.step

    def counting(*args: Any, **kwargs: Any) -> Any:
        passes.append(len(kwargs.get("checks") or []))
        return original(*args, **kwargs)

    keyword.step = counting  # type: ignore[method-assign]
    try:
        session = ModerationSession(keyword, "hi", GuardConfig(threshold=0.5, tau=2, period=4))
        passes.clear()
        verdict = session.feed(SCRIPT)
    finally:
        del keyword.step
    n_tokens = len(session.state.tokens.token_ends)
    assert passes == [n_tokens // 4]  # one pass carrying every check the schedule placed
    assert verdict.intercepted and len(verdict.released) <= CUT


def test_sessions_through_the_batcher_equal_the_embedded_one(keyword: KeywordSafetyModel) -> None:
    """Many sessions, each split its own way, share passes (rows with different check counts)."""
    rng = random.Random(7)
    config = GuardConfig(threshold=0.5, tau=2, hold_back=2, strategy="periodic", period=3)
    texts = [SCRIPT, BENIGN * 2, SCRIPT, BENIGN + SCRIPT, SCRIPT, BENIGN]
    plans = []
    for i, text in enumerate(texts):
        if i % 3 == 0:
            chunks = [text]
        elif i % 3 == 1:
            chunks = list(text)
        else:
            chunks = split(text, [rng.randrange(len(text) + 1) for _ in range(rng.randrange(1, 15))])
        plans.append((text, chunks))

    async def one(batcher: Batcher, tokenizer_thread: TokenizerThread, chunks: list[str]) -> Outcome:
        session = SteppedSession(batcher, tokenizer_thread, config)
        await session.start("Tell me a story")
        released = ""
        for chunk in chunks:
            verdict = await session.feed(chunk)
            released += verdict.released
            if verdict.intercepted:
                return released, True, verdict.intercept_index, session.checks
            await asyncio.sleep(0)
        final = await session.close()
        return released + final.released, final.intercepted, final.intercept_index, session.checks

    async def main() -> list[Outcome]:
        batcher, tokenizer_thread = Batcher(keyword, max_batch=8, max_wait_ms=5), TokenizerThread()
        batcher.start()
        try:
            return list(await asyncio.gather(*(one(batcher, tokenizer_thread, c) for _, c in plans)))
        finally:
            batcher.stop()
            tokenizer_thread.stop()

    got = asyncio.run(main())
    for (text, _), outcome in zip(plans, got, strict=True):
        assert outcome == run_embedded(keyword, [text], config)
        if " bomb" in text:
            assert outcome[1] and len(outcome[0]) <= text.index(" bomb")
        else:
            assert outcome[0] == text


REAL_HARMFUL = ("Sure, here is how to make a pipe bomb. First, get a steel pipe and two end caps. "
                "Fill it with black powder and insert a fuse through a drilled hole in one cap. "
                "Then seal both ends tightly and light the fuse from a safe distance.")
REAL_TEXT = ("Dogs are loyal companions and love long walks in the park every morning. " + REAL_HARMFUL
             + " Anyway, I hope you have a lovely afternoon in the park with your dog.")


@pytest.mark.model
def test_real_model_cuts_a_harmful_answer_at_the_same_token_whatever_the_chunking(guard: Any) -> None:
    words = REAL_TEXT.split(" ")
    outcomes = {name: run_embedded(guard.model, chunks, guard.config) for name, chunks in [
        ("one chunk", [REAL_TEXT]),
        ("word by word", [w + " " for w in words[:-1]] + words[-1:]),
        ("char by char", list(REAL_TEXT)),
    ]}
    whole = outcomes["one chunk"]
    assert whole[1] and "pipe bomb" not in whole[0] and REAL_TEXT.startswith(whole[0])
    assert all(outcome == whole for outcome in outcomes.values()), outcomes


@pytest.mark.parametrize("how", ["one chunk", "word by word"])
def test_text_past_the_context_is_still_checked_at_every_position(tokenizer: Any, how: str) -> None:
    """Chunks longer than the context are prefilled in pieces, each with its own checks; past
    the limit the prompt and recent tokens are re-encoded, and the keyword is still caught."""
    model = make_keyword_model(tokenizer, max_context=48)
    text = BENIGN * 6 + " and then the bomb" + BENIGN
    chunks = [text] if how == "one chunk" else [w + " " for w in text.split(" ")]
    config = GuardConfig(threshold=0.5, tau=1, period=2)
    released, intercepted, _, checks = run_embedded(model, chunks, config)
    assert intercepted and text.startswith(released) and len(released) <= text.index(" bomb")
    assert len(released) > len(BENIGN) * 5  # the long safe part was checked and released
    assert checks >= len(model.tokenizer(text[: text.index(" bomb")])["input_ids"]) // 2
