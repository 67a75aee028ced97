"""A caller's own category rules act on one-shot checks too (decorator, `moderate`).

`check_prompt` judges with the guard's config; a decorator given its own `GuardConfig`
re-judges the verdict's scores with `judge`, under the same category rule every surface uses,
at the head's thresholds that the verdict carries (`Verdict.category_thresholds`).
"""

from __future__ import annotations

from typing import Any

import pytest

from guardrail import Guard, GuardConfig
from guardrail.decorators import guarded
from guardrail.errors import GuardrailViolation
from guardrail.stream.moderator import judge
from guardrail.types import CategoryRule, Verdict
from tests.keyword_model import KeywordSafetyModel
from tests.test_server_support import make_model

BLOCK_VIOLENCE = GuardConfig(categories={"violence": CategoryRule(action="block")})


@pytest.fixture(scope="module")
def guard(tokenizer: Any) -> Guard:
    model = make_model(tokenizer)
    assert isinstance(model, KeywordSafetyModel)
    return Guard(safety_model=model)


def verdict(**update: Any) -> Verdict:
    base = Verdict(label="safe", score=0.01, threshold=0.5, categories={"violence": 0.7, "hate": 0.2},
                   flagged_categories=["violence"], category_thresholds={"violence": 0.5, "hate": 0.5})
    return base.model_copy(update=update)


def test_verdicts_carry_the_heads_category_thresholds(guard: Guard) -> None:
    checked = guard.check_prompt("He drew a knife.")
    assert checked.category_thresholds == {name: guard.model.head.category_thresholds[name]
                                           for name in checked.categories}
    assert "violence" in checked.flagged_categories and checked.label == "safe"


def test_judge_blocks_a_category_the_caller_blocks() -> None:
    judged = judge(verdict(), BLOCK_VIOLENCE)
    assert judged.label == "unsafe" and judged.blocked_categories == ["violence"]


def test_judge_uses_the_callers_category_threshold_or_the_heads() -> None:
    strict = GuardConfig(categories={"hate": CategoryRule(action="block", threshold=0.1)})
    assert judge(verdict(), strict).blocked_categories == ["hate"]
    assert judge(verdict(), GuardConfig(categories={"hate": CategoryRule(action="block")})).label == "safe"


def test_judge_keeps_the_guards_judgement_for_categories_the_caller_does_not_name() -> None:
    guard_blocked = verdict(label="unsafe", blocked_categories=["violence"])
    judged = judge(guard_blocked, GuardConfig(categories={"hate": CategoryRule(action="flag")}))
    assert judged.label == "unsafe" and judged.blocked_categories == ["violence"]
    allowed = judge(verdict(), GuardConfig(categories={"violence": CategoryRule(action="allow")}))
    assert allowed.flagged_categories == [] and allowed.label == "safe"


def test_a_decorator_with_a_block_rule_stops_a_prompt_the_guard_only_flags(guard: Guard) -> None:
    @guarded(guard=guard, check_output=False)
    def plain(prompt: str) -> str:
        return "ok"

    @guarded(guard=guard, config=BLOCK_VIOLENCE, check_output=False)
    def strict(prompt: str) -> str:
        return "ok"

    assert plain("He drew a knife.") == "ok"
    with pytest.raises(GuardrailViolation) as raised:
        strict("He drew a knife.")
    assert raised.value.flagged_categories == ["violence"]
    assert "violence (block)" in str(raised.value)
    assert strict("bake bread") == "ok"
