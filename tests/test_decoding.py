"""Strategic decoding on a tiny random Llama: release rules, actions and equivalence."""

from __future__ import annotations

import pytest

from guardrail.guard import Guard
from guardrail.model.decoding import REFUSAL, SamplingParams, generate_events
from guardrail.model.engine import SafetyModel
from guardrail.types import DoneEvent, GuardConfig, InterceptEvent, ScoreEvent, TokenEvent


def _run(model: SafetyModel, config: GuardConfig, **kw: object) -> list[object]:
    params = SamplingParams(max_new_tokens=int(kw.pop("max_new_tokens", 24)))  # type: ignore[call-overload]
    return list(generate_events(model, "Say something", config, params, **kw))  # type: ignore[arg-type]


def _text(events: list[object]) -> str:
    return "".join(e.text for e in events if isinstance(e, TokenEvent))


@pytest.mark.parametrize("strategy", ["each", "first", "periodic", "annealing"])
def test_guard_never_firing_gives_the_unguarded_text(tiny: SafetyModel, strategy: str) -> None:
    """Logits are unchanged by the guard, so greedy text is identical when nothing is flagged."""
    quiet = GuardConfig(strategy=strategy, threshold=1.0, tau=1)
    guarded = _run(tiny, quiet)
    plain = _run(tiny, quiet, guard=False)
    done = guarded[-1]
    assert isinstance(done, DoneEvent) and not done.intercepted
    assert _text(guarded) == _text(plain) == done.text
    assert any(isinstance(e, ScoreEvent) for e in guarded)
    assert not any(isinstance(e, ScoreEvent) for e in plain)


def test_prompt_check_refuses_at_once(tiny: SafetyModel) -> None:
    events = _run(tiny, GuardConfig(threshold=0.0, action="stop"))
    intercept = next(e for e in events if isinstance(e, InterceptEvent))
    assert intercept.stage == "prompt" and intercept.index == 0
    assert _text(events) == ""


def test_stop_action_releases_nothing_flagged(tiny: SafetyModel) -> None:
    """With every response check unsafe, nothing generated is ever released."""
    config = GuardConfig(threshold=0.0, tau=2, hold_back=0, check_prompt=False, action="stop",
                         strategy="each")
    events = _run(tiny, config)
    assert isinstance(events[-1], DoneEvent) and events[-1].intercepted
    assert _text(events) == ""
    assert sum(isinstance(e, ScoreEvent) for e in events) == 2  # acted on the tau-th check


def test_refuse_action_inserts_refusal(tiny: SafetyModel) -> None:
    config = GuardConfig(threshold=0.0, tau=1, check_prompt=False, action="refuse", strategy="each")
    events = _run(tiny, config)
    assert _text(events).startswith(REFUSAL)
    assert isinstance(events[-1], DoneEvent) and events[-1].text.startswith(REFUSAL)


def test_periodic_releases_only_checked_tokens(tiny: SafetyModel) -> None:
    """Each release ends exactly at the last safe check minus the hold-back; only the end flushes."""
    hold_back, period = 2, 4
    config = GuardConfig(strategy="periodic", period=period, threshold=1.0, hold_back=hold_back)
    events = _run(tiny, config, max_new_tokens=20)
    done = events[-1]
    assert isinstance(done, DoneEvent) and not done.intercepted
    total = done.usage.completion_tokens
    checks: list[int] = []
    releases: list[tuple[int, int]] = []  # (first released token, last check before the release)
    for event in events:
        if isinstance(event, ScoreEvent):
            checks.append(event.index)
        elif isinstance(event, TokenEvent):
            releases.append((event.index, checks[-1]))
    assert checks == [0, *range(period, total + 1, period)]  # the prompt check, then every period
    assert total == 20 and len(releases) >= 4
    ends = [start for start, _ in releases[1:]] + [total]
    assert releases[0][0] == 0  # contiguous from the first token ...
    for (start, last_check), end in zip(releases, ends, strict=True):
        assert start < end
        if end < total:  # ... and every release before the end stops hold_back short of the check
            assert end == last_check - hold_back
    assert ends[-2] == total - hold_back  # the end of the stream flushes the held-back tail only
    assert _text(events) == done.text


def test_prefill_is_part_of_the_checked_response(tiny: SafetyModel) -> None:
    config = GuardConfig(threshold=1.0, check_prompt=False, strategy="each")
    events = _run(tiny, config, prefill="Sure, here is", max_new_tokens=4)
    assert _text(events).startswith("Sure, here is")


def test_guard_api_validates_input(tiny: SafetyModel) -> None:
    from guardrail.model.prompts import InputError

    guard = Guard(safety_model=tiny)
    with pytest.raises(InputError, match="empty"):
        guard.check_prompt("   ")
    with pytest.raises(InputError, match="messages must not be empty"):
        guard.check_prompt([])
    with pytest.raises(InputError, match="message 0"):
        guard.check_prompt([{"role": "wizard", "content": "hi"}])
    verdict = guard.check_prompt("bad \x00\x07 bytes \udcff ok")
    assert verdict.label in ("safe", "unsafe") and 0.0 <= verdict.score <= 1.0


def test_text_longer_than_context_keeps_working(tokenizer) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import make_tiny

    model = make_tiny(tokenizer, max_context=128)
    guard = Guard(safety_model=model)
    long_text = "word " * 2000
    assert guard.check_prompt(long_text).tokens <= 128
    assert guard.check_response("hi", long_text).tokens <= 128
    session = guard.session("hi", config=GuardConfig(threshold=1.0))
    for _ in range(10):
        verdict = session.feed("many words in a chunk " * 10)
    assert verdict.tokens > 128 and not verdict.intercepted
