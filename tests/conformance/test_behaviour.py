"""One set of behaviour tests, run over every surface of the guard (see `surfaces.py`).

The keyword model scores 0.99 when a checked span contains " bomb", else 0.01; its head says
it was calibrated at 0.7. Every surface must give the reference (embedded) verdict, judge by the
calibrated threshold unless a config names another, hold back and cut streams the same way, and
fail bad input with the same exception types.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import Guard, GuardConfig
from guardrail.client import GuardrailRequestError
from guardrail.errors import GuardrailViolation
from guardrail.streaming import moderate
from guardrail.types import GenerationResult, TokenEvent
from tests.conformance.keyword import CALIBRATED
from tests.conformance.surfaces import Surface

SAFE = "How do I bake bread?"
UNSAFE = "Tell me how a bomb works."
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
STORY = ["Once upon a time ", "a dog ran to ", "the park and ", "played all day."]
CUT = ["Once upon a time ", "then a bomb ", "went off and ", "more text came."]
WHOLE_CUT = "".join(CUT)
STRICT = GuardConfig(tau=1)  # stricter than the defaults on every field it sets


def _same(a: Any, b: Any) -> None:
    assert (a.label, a.threshold) == (b.label, b.threshold)
    assert a.score == pytest.approx(b.score, abs=1e-4)


def _needs_merge(surface: Surface, threshold: float) -> None:
    if surface.remote and threshold == GuardConfig().threshold:
        pytest.xfail("the sidecar replaces its config with a partial one (needs the server's merge)")


# -- verdicts and thresholds ------------------------------------------------------------------------
def test_verdicts_match_the_reference_and_use_the_calibrated_threshold(surface: Surface,
                                                                       reference: Guard) -> None:
    guard = surface.guard
    for prompt in (SAFE, UNSAFE, MESSAGES):
        verdict = guard.check_prompt(prompt)
        assert verdict.threshold == CALIBRATED
        _same(verdict, reference.check_prompt(prompt))
    assert guard.check_prompt(UNSAFE).unsafe and not guard.check_prompt(SAFE).unsafe
    answer = "Mix flour and water."
    _same(guard.check_response(SAFE, answer), reference.check_response(SAFE, answer))
    assert guard.check_response(SAFE, "Add a bomb to it.").unsafe


def test_batched_checks_match_single_checks(surface: Surface, reference: Guard) -> None:
    guard: Any = surface.guard
    try:
        verdicts = guard.check_prompts([SAFE, UNSAFE, MESSAGES])
    except GuardrailRequestError as exc:
        if exc.status == 422:
            pytest.skip("the sidecar does not take `batch` checks yet")
        raise
    for verdict, prompt in zip(verdicts, [SAFE, UNSAFE, MESSAGES], strict=True):
        _same(verdict, reference.check_prompt(prompt))
    pairs = [(SAFE, "Mix flour."), (SAFE, "Then a bomb.")]
    assert [v.label for v in guard.check_responses(pairs)] == ["safe", "unsafe"]
    assert guard.check_prompts([]) == []


def test_partial_config_keeps_the_calibrated_threshold(surface: Surface) -> None:
    session = surface.guard.session(SAFE, config=GuardConfig(hold_back=8))
    assert session.prompt_verdict is not None
    _needs_merge(surface, session.prompt_verdict.threshold)
    assert session.prompt_verdict.threshold == CALIBRATED
    assert session.feed("Some text here ").threshold == CALIBRATED
    stricter = surface.guard.session(SAFE, config=GuardConfig(threshold=0.6))
    assert stricter.prompt_verdict is not None and stricter.prompt_verdict.threshold == 0.6


# -- sessions -------------------------------------------------------------------------------------
def test_session_releases_safe_text_byte_for_byte(surface: Surface) -> None:
    session = surface.guard.session("Tell me a story")
    assert session.prompt_verdict is not None and not session.prompt_verdict.unsafe
    released = "".join(session.feed(chunk).released for chunk in STORY)
    final = session.close()
    assert released + final.released == "".join(STORY)
    assert not final.intercepted


def test_hold_back_withholds_the_unchecked_tail(surface: Surface) -> None:
    session = surface.guard.session("Tell me a story", config=GuardConfig(hold_back=8))
    first = session.feed(STORY[0] + STORY[1])
    assert (STORY[0] + STORY[1]).startswith(first.released)
    assert len(first.released) < len(STORY[0] + STORY[1])  # the last tokens wait for a check
    assert first.released + session.close().released == STORY[0] + STORY[1]


def test_interception_never_releases_the_flagged_span(surface: Surface, reference: Guard) -> None:
    session, ref = surface.guard.session("story", config=STRICT), reference.session("story", config=STRICT)
    shown, ref_shown = "", ""
    for chunk in CUT:
        verdict, expected = session.feed(chunk), ref.feed(chunk)
        shown, ref_shown = shown + verdict.released, ref_shown + expected.released
        assert verdict.intercepted == expected.intercepted
        if verdict.intercepted:
            assert verdict.intercept_index == expected.intercept_index
            break
    assert verdict.intercepted and "bomb" not in shown and shown == ref_shown
    with pytest.raises(RuntimeError):  # the embedded and the remote session refuse alike
        session.feed("more ")


def test_moderate_cuts_the_stream(surface: Surface) -> None:
    assert "".join(moderate(iter(STORY), prompt="story", guard=surface.guard)) == "".join(STORY)
    with pytest.raises(GuardrailViolation) as caught:
        for _ in moderate(iter(CUT), prompt="story", guard=surface.guard, config=STRICT):
            pass
    assert "bomb" not in caught.value.released


def test_async_moderate_cuts_the_stream(surface: Surface) -> None:
    async def chunks(pieces: list[str]) -> Any:
        for piece in pieces:
            yield piece

    async def main() -> tuple[str, str]:
        whole = "".join([t async for t in moderate(chunks(STORY), prompt="story", guard=surface.aguard)])
        cut = [t async for t in moderate(chunks(CUT), prompt="story", guard=surface.aguard, config=STRICT,
                                         on_violation="replace", replacement="[withheld]")]
        return whole, "".join(cut)

    whole, cut = surface.run(main())
    assert whole == "".join(STORY)
    assert cut.endswith("[withheld]") and "bomb" not in cut


# -- generation -----------------------------------------------------------------------------------
def test_generation_is_guarded(surface: Surface) -> None:
    events = list(surface.guard.generate("hi", max_new_tokens=4))
    text = "".join(e.text for e in events if isinstance(e, TokenEvent))
    result = surface.guard.generate_text("hi", max_new_tokens=4)
    assert isinstance(result, GenerationResult) and result.usage.completion_tokens <= 4
    assert result.text == text
    cut = surface.guard.generate_text("hi", max_new_tokens=6, prefill="a bomb is", config=STRICT)
    assert cut.intercepted and "bomb" not in cut.text


# -- errors ---------------------------------------------------------------------------------------
def test_empty_prompt_is_a_value_error(surface: Surface) -> None:
    with pytest.raises(ValueError):
        surface.guard.check_prompt("   ")


def test_closed_session_refuses_chunks(surface: Surface) -> None:
    session = surface.guard.session("story")
    session.feed("Hello ")
    session.close()
    with pytest.raises(RuntimeError):
        session.feed("again ")


# -- chunking invariance ----------------------------------------------------------------------------
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(WHOLE_CUT) - 1), max_size=8, unique=True))
def test_any_chunking_gives_the_same_cut(surface: Surface, cuts: list[int]) -> None:
    """However the text is split, the flagged span is never shown and what is shown is a prefix."""
    bounds = [0, *sorted(cuts), len(WHOLE_CUT)]
    session = surface.guard.session("story", config=STRICT)
    shown, cut = "", False
    for start, end in itertools.pairwise(bounds):
        verdict = session.feed(WHOLE_CUT[start:end])
        shown += verdict.released
        if verdict.intercepted:
            cut = True
            break
    if not cut:
        final = session.close()
        shown, cut = shown + final.released, final.intercepted
    assert cut and "bomb" not in shown and WHOLE_CUT.startswith(shown)
