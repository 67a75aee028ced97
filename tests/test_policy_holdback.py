"""Strategies, tau / threshold, and the hold-back no-leak guarantee."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.policy import CheckSchedule, TauPolicy


def _checked(strategy: str, period: int, n: int) -> list[int]:
    schedule = CheckSchedule(strategy, period)
    return [k for k in range(1, n + 1) if schedule.should_check(k)]


def test_strategies() -> None:
    assert _checked("each", 4, 5) == [1, 2, 3, 4, 5]
    assert _checked("first", 4, 5) == [1]
    assert _checked("periodic", 4, 12) == [4, 8, 12]
    annealed = _checked("annealing", 8, 64)
    gaps = [b - a for a, b in itertools.pairwise(annealed)]
    assert annealed[:2] == [1, 2] and gaps == sorted(gaps) and max(gaps) == 8
    with pytest.raises(ValueError, match="unknown strategy"):
        CheckSchedule("sometimes")


def test_tau_needs_consecutive_unsafe() -> None:
    policy = TauPolicy(threshold=0.5, tau=3)
    assert [policy.update(s) for s in (0.9, 0.9, 0.1, 0.9, 0.9)] == [False] * 5
    assert policy.update(0.5) is True  # threshold is inclusive


def test_holdback_releases_only_checked_tokens() -> None:
    buffer = HoldBackBuffer(hold_back=2)
    buffer.append(5)
    assert buffer.on_check(5, unsafe=False) == 3
    buffer.append(3)
    assert buffer.on_check(8, unsafe=True) == 0
    assert buffer.intercept() == 3
    assert buffer.finish(True) == 0


@settings(max_examples=300, deadline=None)
@given(
    scores=st.lists(st.floats(0, 1), min_size=1, max_size=60),
    hold_back=st.integers(0, 8),
    tau=st.integers(1, 4),
    threshold=st.floats(0.05, 0.95),
    period=st.integers(1, 6),
)
def test_flagged_tokens_never_released(
    scores: list[float], hold_back: int, tau: int, threshold: float, period: int
) -> None:
    """Simulate a stream: one token per step, a check every `period` tokens."""
    buffer, policy = HoldBackBuffer(hold_back), TauPolicy(threshold, tau)
    last_safe, cut, n = 0, False, 0
    for score in scores:
        for _ in range(period):
            n += 1
            buffer.append(1)
            assert buffer.released <= max(0, last_safe - hold_back)  # unchecked tokens stay in
        if policy.update(score):
            buffer.intercept()
            cut = True
            break
        if score < threshold:
            last_safe = n
        buffer.on_check(n, score >= threshold)
        assert buffer.released == max(0, last_safe - hold_back)
    if cut:
        assert buffer.released <= last_safe  # nothing after the last safe check ever leaves
        assert buffer.finish(True) == 0
    else:
        buffer.finish(scores[-1] < threshold)
        expected = n if scores[-1] < threshold else max(0, last_safe - hold_back)
        assert buffer.released == expected


@settings(max_examples=100, deadline=None)
@given(strategy=st.sampled_from(["each", "first", "periodic", "annealing"]), period=st.integers(1, 8),
       cuts=st.lists(st.integers(0, 80), max_size=12))
def test_schedule_positions_do_not_depend_on_how_the_range_is_split(strategy: str, period: int,
                                                                     cuts: list[int]) -> None:
    whole = CheckSchedule(strategy, period).positions(0, 80)
    split_schedule = CheckSchedule(strategy, period)
    got: list[int] = []
    last = 0
    for point in [*sorted(cuts), 80]:
        got += split_schedule.positions(last, point)
        last = point
    one_by_one = CheckSchedule(strategy, period)
    assert got == whole == [n for n in range(1, 81) if one_by_one.should_check(n)]
