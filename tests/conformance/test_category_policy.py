"""A `block` category rule gives the same verdict and the same cut on every surface.

The keyword model scores " knife" as `violence` 0.99 while its binary score stays 0.01, so only
the rule can stop it: each surface must carry the rule to the engine (sessions, `moderate`,
generation), cut where the embedded reference cuts, never release the blocked span, and name
the category; an unknown category name fails alike everywhere.
"""

from __future__ import annotations

import pytest

from guardrail import Guard, GuardConfig
from guardrail.errors import GuardrailViolation
from guardrail.streaming import moderate
from guardrail.types import CategoryRule, InterceptEvent, ScoreEvent
from tests.conformance.surfaces import Surface

BLOCK = GuardConfig(categories={"violence": CategoryRule(action="block")})
KNIFE = ["Once upon a time ", "the hero drew a knife ", "and the story went ", "on for a while."]


def _feed_all(session: object, pieces: list[str]) -> tuple[str, list[object]]:
    shown, verdicts = "", []
    for piece in pieces:
        verdict = session.feed(piece)  # type: ignore[attr-defined]
        shown += verdict.released
        verdicts.append(verdict)
        if verdict.intercepted:
            return shown, verdicts
    final = session.close()  # type: ignore[attr-defined]
    return shown + final.released, [*verdicts, final]


def test_block_rule_cuts_where_the_reference_cuts(surface: Surface, reference: Guard) -> None:
    shown, verdicts = _feed_all(surface.guard.session("story", config=BLOCK), KNIFE)
    ref_shown, ref_verdicts = _feed_all(reference.session("story", config=BLOCK), KNIFE)
    assert len(verdicts) == len(ref_verdicts)
    for got, expected in zip(verdicts, ref_verdicts, strict=True):
        keys = ("label", "released", "intercepted", "intercept_index", "flagged_categories",
                "blocked_categories")
        assert {k: getattr(got, k) for k in keys} == {k: getattr(expected, k) for k in keys}
    cut = verdicts[-1]
    assert cut.intercepted and cut.label == "unsafe" and cut.score < 0.5  # type: ignore[attr-defined]
    assert cut.blocked_categories == ["violence"]  # type: ignore[attr-defined]
    assert shown == ref_shown and "knife" not in shown and "".join(KNIFE).startswith(shown)


def test_without_the_rule_the_knife_is_only_flagged(surface: Surface) -> None:
    shown, verdicts = _feed_all(surface.guard.session("story"), KNIFE)
    assert shown == "".join(KNIFE) and not any(v.intercepted for v in verdicts)  # type: ignore[attr-defined]
    assert any("violence" in v.flagged_categories for v in verdicts)  # type: ignore[attr-defined]
    assert not any(v.blocked_categories for v in verdicts)  # type: ignore[attr-defined]


def test_a_blocked_prompt_verdict_is_unsafe(surface: Surface) -> None:
    verdict = surface.guard.session("hand me the knife", config=BLOCK).prompt_verdict
    assert verdict is not None and verdict.unsafe and verdict.blocked_categories == ["violence"]


def test_moderate_stops_on_a_block(surface: Surface) -> None:
    assert "".join(moderate(iter(KNIFE), prompt="story", guard=surface.guard)) == "".join(KNIFE)
    with pytest.raises(GuardrailViolation) as caught:
        for _ in moderate(iter(KNIFE), prompt="story", guard=surface.guard, config=BLOCK):
            pass
    assert "knife" not in caught.value.released


def test_generation_stops_on_a_block(surface: Surface, reference: Guard) -> None:
    kwargs = {"max_new_tokens": 4, "prefill": "the knife is", "config": BLOCK}
    events = list(surface.guard.generate("hi", **kwargs))
    expected = list(reference.generate("hi", **kwargs))
    cut = next(e for e in events if isinstance(e, InterceptEvent))
    ref_cut = next(e for e in expected if isinstance(e, InterceptEvent))
    assert (cut.index, cut.flagged_categories) == (ref_cut.index, ref_cut.flagged_categories)
    assert cut.flagged_categories == ["violence"]
    blocked = [e for e in events if isinstance(e, ScoreEvent) and e.blocked_categories]
    assert blocked and all(e.unsafe for e in blocked)
    result = surface.guard.generate_text("hi", **kwargs)
    assert result.intercepted and result.flagged_categories == ["violence"] and "knife" not in result.text
    unguarded = surface.guard.generate_text("hi", max_new_tokens=4, prefill="the knife is")
    assert not unguarded.intercepted and unguarded.flagged_categories == ["violence"]


def test_an_unknown_category_fails_alike(surface: Surface) -> None:
    bad = GuardConfig(categories={"violense": CategoryRule(action="block")})
    with pytest.raises(ValueError, match="violense"):
        surface.guard.session("story", config=bad)
    with pytest.raises(ValueError, match="violense"):
        surface.guard.generate_text("hi", max_new_tokens=2, config=bad)
