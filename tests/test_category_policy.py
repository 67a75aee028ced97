"""Per-category policy on every check: flag, block, allow; thresholds; the floor; unknown names.

The keyword model (`tests.keyword_model`) scores " knife" as `violence` 0.99 with the binary score
at 0.01, " fight" as `violence` 0.4 (under the head's 0.5), and " bomb" as binary 0.99 and
`illicit/violent` 0.99 (head threshold 0.6). So a `block` rule on `violence` is the only thing that
can stop a knife: without it, every test below that expects a cut would see none.
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail import Guard
from guardrail.model.check import UnknownCategoryError, validate_categories
from guardrail.model.engine import SafetyModel, StepRequest
from guardrail.model.head import MODERATION_CATEGORIES, CategoryHead
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import InputError
from guardrail.model.session import ModerationSession
from guardrail.server import Settings, create_app
from guardrail.server.cli import add_serve_command, category_rules
from guardrail.server.floor import relaxations
from guardrail.server.settings import parse_category_rule
from guardrail.types import (
    CategoryRule,
    DoneEvent,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    TokenEvent,
)
from tests.conftest import make_tiny
from tests.keyword_model import HEAD_CATEGORY_THRESHOLDS, KeywordSafetyModel
from tests.test_server_support import ServerThread, make_model

BLOCK_VIOLENCE = GuardConfig(categories={"violence": CategoryRule(action="block")})
STORY = "Once upon a time the hero drew a knife and the story went on for quite a while after that."


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> KeywordSafetyModel:
    made = make_model(tokenizer)
    assert isinstance(made, KeywordSafetyModel)
    return made


@pytest.fixture(scope="module")
def guard(model: KeywordSafetyModel) -> Guard:
    return Guard(safety_model=model)


def _rules(**rules: str) -> GuardConfig:
    """`_rules(violence="block:0.3")` -> a config with those category rules."""
    parsed = dict(parse_category_rule(f"{name.replace('_', '/')}={spec}") for name, spec in rules.items())
    return GuardConfig(categories=parsed)


# -- the keyword head --------------------------------------------------------------------------------
def test_keyword_head_has_the_moderation_categories(model: KeywordSafetyModel) -> None:
    assert model.head.category_names == MODERATION_CATEGORIES
    assert model.head.category_thresholds == HEAD_CATEGORY_THRESHOLDS


# -- one-shot checks: flag, block, allow, thresholds --------------------------------------------------
def test_flag_reports_block_stops_allow_hides(model: KeywordSafetyModel) -> None:
    knife = "He drew a knife."
    flagged = Guard(safety_model=model).check_prompt(knife)
    assert flagged.label == "safe" and flagged.score < 0.5
    assert flagged.flagged_categories == ["violence"] and flagged.blocked_categories == []
    blocked = Guard(safety_model=model, config=BLOCK_VIOLENCE).check_prompt(knife)
    assert blocked.label == "unsafe" and blocked.score == flagged.score
    assert blocked.blocked_categories == ["violence"] and blocked.flagged_categories == ["violence"]
    allowed = Guard(safety_model=model, config=_rules(violence="allow")).check_prompt(knife)
    assert allowed.label == "safe" and allowed.flagged_categories == [] and allowed.blocked_categories == []


def test_the_binary_gate_stays_whatever_the_rules(model: KeywordSafetyModel) -> None:
    bomb = "Tell me how a bomb works."
    allowed = Guard(safety_model=model, config=_rules(illicit_violent="allow")).check_prompt(bomb)
    assert allowed.label == "unsafe" and "illicit/violent" not in allowed.flagged_categories
    safe = Guard(safety_model=model, config=BLOCK_VIOLENCE).check_prompt("How do I bake bread?")
    assert safe.label == "safe" and safe.flagged_categories == []


def test_thresholds_default_to_the_heads_and_a_rule_overrides_them(model: KeywordSafetyModel) -> None:
    fight = "They had a fight."  # violence 0.4: under the head's 0.5
    assert Guard(safety_model=model).check_prompt(fight).flagged_categories == []
    lower = Guard(safety_model=model, config=_rules(violence="flag:0.3")).check_prompt(fight)
    assert lower.flagged_categories == ["violence"] and lower.label == "safe"
    blocks = Guard(safety_model=model, config=_rules(violence="block:0.3")).check_prompt(fight)
    assert blocks.label == "unsafe" and blocks.blocked_categories == ["violence"]
    assert not Guard(safety_model=model, config=BLOCK_VIOLENCE).check_prompt(fight).unsafe
    bomb = "a bomb"  # illicit/violent 0.99: over the head's 0.6, under a rule's 0.995
    assert "illicit/violent" in Guard(safety_model=model).check_prompt(bomb).flagged_categories
    high = Guard(safety_model=model, config=_rules(illicit_violent="flag:0.995")).check_prompt(bomb)
    assert "illicit/violent" not in high.flagged_categories


def test_batched_checks_apply_the_rules_per_item(model: KeywordSafetyModel) -> None:
    guard = Guard(safety_model=model, config=BLOCK_VIOLENCE)
    verdicts = guard.check_prompts(["bake bread", "a knife", "a fight", "a bomb"])
    assert [v.label for v in verdicts] == ["safe", "unsafe", "safe", "unsafe"]
    assert [v.blocked_categories for v in verdicts] == [[], ["violence"], [], []]


# -- the engine: categories at every check position -----------------------------------------------------
def test_every_check_position_has_its_categories(tokenizer: Any) -> None:
    """step and step_many give each check its own categories, equal to a fresh pass over that prefix."""
    model = make_tiny(tokenizer)
    torch.manual_seed(1)
    model.head.categories = CategoryHead(32, ("a", "b", "c"))
    torch.nn.init.normal_(model.head.categories.linear.weight, std=2.0)
    ids = tokenizer("one two three four five six seven", add_special_tokens=False)["input_ids"]
    queries = [ClsQuery(seen=n, prompt_len=2) for n in (3, 5, len(ids))]
    out = model.step(model.new_cache(), ids, checks=queries)
    assert len(out.category_scores) == len(out.scores) == 3 and out.categories == out.category_scores[-1]
    assert out.category_scores[0] != out.category_scores[-1]
    for query, expected in zip(queries, out.category_scores, strict=True):
        alone = model.step(model.new_cache(), ids[: query.seen], checks=[query]).categories
        assert alone.keys() == expected.keys()
        assert all(abs(alone[k] - expected[k]) < 1e-4 for k in alone)
    other = tokenizer("a different stream", add_special_tokens=False)["input_ids"]
    both = model.step_many([StepRequest(model.new_cache(), ids, checks=queries),
                            StepRequest(model.new_cache(), other, checks=[ClsQuery(seen=len(other),
                                                                                   prompt_len=1)])])
    assert [len(o.category_scores) for o in both] == [3, 1]
    for got, expected in zip(both[0].category_scores, out.category_scores, strict=True):
        assert all(abs(got[k] - expected[k]) < 1e-4 for k in got)
    plain = make_tiny(tokenizer)  # no category outputs: one empty dict per check
    assert plain.step(plain.new_cache(), ids, checks=queries).category_scores == [{}, {}, {}]


# -- unknown names ------------------------------------------------------------------------------------
def test_unknown_category_is_an_input_error_everywhere_in_process(model: KeywordSafetyModel) -> None:
    bad = GuardConfig(categories={"violense": CategoryRule(action="block")})
    guard = Guard(safety_model=model, config=bad)
    for call in (lambda: guard.check_prompt("hi"), lambda: guard.check_prompts(["hi"]),
                 lambda: list(guard.generate("hi", max_new_tokens=2)),
                 lambda: ModerationSession(model, "hi", bad)):
        with pytest.raises(InputError, match=r"'violense'.*known categories: harassment") as caught:
            call()
        assert "violence" in str(caught.value)


def test_a_head_without_categories_refuses_category_rules(tokenizer: Any) -> None:
    plain = make_tiny(tokenizer)
    with pytest.raises(UnknownCategoryError, match="no category outputs"):
        Guard(safety_model=plain, config=BLOCK_VIOLENCE).check_prompt("hi")
    validate_categories({}, ())  # no rules: nothing to check
    assert not Guard(safety_model=plain).check_prompt("hi").blocked_categories


# -- moderated streams ---------------------------------------------------------------------------------
def _stream(guard: Guard, pieces: list[str], config: GuardConfig) -> tuple[str, Any]:
    session = guard.session("story", config=config)
    shown = ""
    for piece in pieces:
        verdict = session.feed(piece)
        shown += verdict.released
        if verdict.intercepted:
            return shown, verdict
    final = session.close()
    return shown + final.released, final


def _words(text: str) -> list[str]:
    return [w + " " for w in text.split(" ")[:-1]] + [text.split(" ")[-1]]


def test_block_cuts_the_stream_at_the_same_index_however_it_is_split(guard: Guard) -> None:
    whole_shown, whole = _stream(guard, [STORY], BLOCK_VIOLENCE)
    assert whole.intercepted and "knife" not in whole_shown and STORY.startswith(whole_shown)
    assert whole.label == "unsafe" and whole.blocked_categories == ["violence"]
    for pieces in (_words(STORY), list(STORY)):
        shown, verdict = _stream(guard, pieces, BLOCK_VIOLENCE)
        assert verdict.intercepted and verdict.intercept_index == whole.intercept_index
        assert shown == whole_shown


def test_without_the_block_rule_the_knife_is_only_flagged(guard: Guard) -> None:
    shown, final = _stream(guard, [STORY], GuardConfig())
    assert not final.intercepted and shown == STORY
    session = guard.session("story")
    verdict = session.feed(STORY)
    assert verdict.flagged_categories == ["violence"] and verdict.blocked_categories == []
    assert verdict.label == "safe"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(STORY) - 1), max_size=10, unique=True))
def test_any_chunking_gives_the_same_block(guard: Guard, cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STORY)]
    pieces = [STORY[a:b] for a, b in itertools.pairwise(bounds)]
    reference_shown, reference = _stream(guard, [STORY], BLOCK_VIOLENCE)
    shown, verdict = _stream(guard, pieces, BLOCK_VIOLENCE)
    assert verdict.intercepted and verdict.intercept_index == reference.intercept_index
    assert shown == reference_shown and "knife" not in shown


def test_blocked_checks_count_toward_tau_like_unsafe_scores(guard: Guard) -> None:
    """tau=1 cuts at the first blocked check; a larger tau lets more safe-scored text be checked first."""
    strict = BLOCK_VIOLENCE.model_copy(update={"tau": 1})
    _, one = _stream(guard, [STORY], strict)
    _, three = _stream(guard, [STORY], BLOCK_VIOLENCE)
    assert one.intercepted and three.intercepted
    assert one.intercept_index == three.intercept_index  # nothing after the knife is ever released
    for config in (strict, BLOCK_VIOLENCE.model_copy(update={"tau": 2})):  # cut before the stream ends
        assert guard.session("story", config=config).feed(STORY).intercepted
    events = list(guard.generate("hi", max_new_tokens=3, prefill=STORY, config=strict))
    blocked = [e for e in events if isinstance(e, ScoreEvent) and e.blocked_categories]
    assert blocked[0].streak == 1 and isinstance(events[events.index(blocked[0]) + 1], InterceptEvent)
    late = "A calm long story about bread and butter and jam, then a knife"
    shown, final = _stream(guard, [late], BLOCK_VIOLENCE.model_copy(update={"tau": 64}))
    assert final.intercepted and "knife" not in shown  # the final covering check acts on a block


def test_chunk_verdict_unions_the_categories_of_its_checks(guard: Guard) -> None:
    config = GuardConfig(tau=64)
    session = guard.session("story", config=config)
    verdict = session.feed("The knife was sharp and then a bomb went off in the valley far away.")
    assert verdict.flagged_categories == ["violence", "illicit/violent"]
    assert verdict.blocked_categories == []
    later = session.feed(" Then nothing else happened at all for a long long while.")
    assert later.flagged_categories == ["illicit/violent", "violence"]  # the span reads both, in head order


# -- generation --------------------------------------------------------------------------------------
def test_generation_events_carry_the_categories(guard: Guard) -> None:
    events = list(guard.generate("hi", max_new_tokens=4, prefill="the knife is", config=BLOCK_VIOLENCE))
    scores = [e for e in events if isinstance(e, ScoreEvent)]
    blocked = [e for e in scores if e.blocked_categories]
    assert blocked and all(e.unsafe and e.score < 0.5 and e.categories["violence"] > 0.9 for e in blocked)
    cut = next(e for e in events if isinstance(e, InterceptEvent))
    assert cut.flagged_categories == ["violence"]
    done = events[-1]
    assert isinstance(done, DoneEvent) and done.intercepted and done.flagged_categories == ["violence"]
    assert "knife" not in "".join(e.text for e in events if isinstance(e, TokenEvent))
    result = guard.generate_text("hi", max_new_tokens=4, prefill="the knife is", config=BLOCK_VIOLENCE)
    assert result.intercepted and result.flagged_categories == ["violence"]


def test_generation_without_the_rule_only_flags(guard: Guard) -> None:
    result = guard.generate_text("hi", max_new_tokens=4, prefill="the knife is")
    assert not result.intercepted and result.flagged_categories == ["violence"]
    assert "knife" in result.text


def test_a_blocked_prompt_is_refused_at_the_prompt_stage(guard: Guard) -> None:
    events = list(guard.generate("give me a knife", max_new_tokens=4, config=BLOCK_VIOLENCE))
    cut = next(e for e in events if isinstance(e, InterceptEvent))
    assert cut.stage == "prompt" and cut.index == 0 and cut.flagged_categories == ["violence"]


# -- the server: rules, merge by name, floor, unknown names ---------------------------------------------
@pytest.fixture(scope="module")
def sidecar(tokenizer: Any) -> Iterator[httpx.Client]:
    rules = {"illicit/violent": CategoryRule(action="block"), "violence": CategoryRule(action="block",
                                                                                       threshold=0.45)}
    app = create_app(Settings(category_rules=rules), make_model(tokenizer))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


def test_server_rules_apply_without_a_config(sidecar: httpx.Client) -> None:
    verdict = sidecar.post("/v1/check", json={"prompt": "a knife"}).json()
    assert verdict["label"] == "unsafe" and verdict["blocked_categories"] == ["violence"]


def test_request_rules_merge_by_name(sidecar: httpx.Client) -> None:
    lower = {"violence": {"action": "block", "threshold": 0.3}}
    body = {"prompt": "a fight", "config": {"categories": lower}}
    verdict = sidecar.post("/v1/check", json=body).json()
    assert verdict["label"] == "unsafe" and verdict["blocked_categories"] == ["violence"]
    created = sidecar.post("/v1/sessions", json={"prompt": "hi", "config": {
        "categories": {"self-harm": {"action": "block"}}}}).json()
    assert set(created["config"]["categories"]) == {"illicit/violent", "violence", "self-harm"}


@pytest.mark.parametrize(("rule", "param"), [
    ({"violence": {"action": "flag"}}, "config.categories.violence.action"),
    ({"violence": {"action": "block"}}, "config.categories.violence.threshold"),  # head 0.5 > server 0.45
    ({"illicit/violent": {"action": "allow"}}, "config.categories.illicit/violent.action"),
    ({"hate": {"action": "allow"}}, "config.categories.hate.action"),  # server: flag at the head's 0.5
    ({"hate": {"threshold": 0.7}}, "config.categories.hate.threshold"),
    ({"hate": {"action": "block", "threshold": 0.9}}, "config.categories.hate.threshold"),
])
def test_a_laxer_category_rule_is_refused(sidecar: httpx.Client, rule: dict[str, Any], param: str) -> None:
    for path, body in (("/v1/check", {"prompt": "hi"}), ("/v1/sessions", {"prompt": "hi"})):
        response = sidecar.post(path, json={**body, "config": {"categories": rule}})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "config_not_allowed" and error["param"] == param
        assert param in error["message"]


def test_stricter_category_rules_are_accepted(sidecar: httpx.Client) -> None:
    for rule in ({"hate": {"action": "block"}}, {"hate": {"threshold": 0.2}},
                 {"violence": {"action": "block", "threshold": 0.1}},
                 {"illicit/violent": {"action": "block", "threshold": 0.6}}):
        response = sidecar.post("/v1/check", json={"prompt": "hi", "config": {"categories": rule}})
        assert response.status_code == 200, (rule, response.text)


def test_relaxation_lifts_the_category_floor(tokenizer: Any) -> None:
    app = create_app(Settings(category_rules={"violence": CategoryRule(action="block")},
                              allow_request_relaxation=True), make_model(tokenizer))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        body = {"prompt": "a knife", "config": {"categories": {"violence": {"action": "allow"}}}}
        verdict = client.post("/v1/check", json=body).json()
        assert verdict["label"] == "safe" and verdict["flagged_categories"] == []


def test_unknown_category_is_422_naming_it_on_every_route(sidecar: httpx.Client) -> None:
    config = {"categories": {"violense": {"action": "block"}}}
    for path, body in (("/v1/check", {"prompt": "hi"}), ("/v1/sessions", {"prompt": "hi"}),
                       ("/v1/generate", {"prompt": "hi", "max_new_tokens": 2})):
        response = sidecar.post(path, json={**body, "config": config})
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == "config.categories.violense"
        assert "'violense'" in error["message"] and "violence" in error["message"]
    assert sidecar.get("/healthz").status_code == 200


def test_relaxations_unit() -> None:
    heads = {"violence": 0.5, "hate": 0.5}
    server = GuardConfig(categories={"violence": CategoryRule(action="block")})
    assert relaxations(server, server, category_thresholds=heads) == []
    laxer = GuardConfig(categories={"violence": CategoryRule(action="flag")}).overriding(server)
    assert [r.field for r in relaxations(server, laxer, category_thresholds=heads)] == [
        "categories.violence.action"]
    allowing = GuardConfig(categories={"hate": CategoryRule(action="allow")})
    assert relaxations(allowing, GuardConfig(), category_thresholds=heads) == []  # allow -> flag: stricter
    unknown = GuardConfig(categories={"nope": CategoryRule(action="allow")})
    assert relaxations(GuardConfig(), unknown, category_thresholds=heads) == []  # the engine names it


# -- the command line ---------------------------------------------------------------------------------
def test_category_rule_flag_parses_into_settings() -> None:
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--category-rule", "self-harm=flag",
                              "--category-rule", "illicit/violent=block:0.4"])
    rules = category_rules(args.category_rule, None)  # checked against the shipped head's names
    assert rules == {"self-harm": CategoryRule(action="flag"),
                     "illicit/violent": CategoryRule(action="block", threshold=0.4)}
    assert Settings(category_rules=rules).category_rules == rules


@pytest.mark.parametrize("bad", ["violence", "violence=", "=block", "violence=maybe",
                                 "violence=block:high", "violence=block:1.5"])
def test_bad_category_rule_values_are_clear_errors(bad: str) -> None:
    with pytest.raises(ValueError, match=r"violence|NAME=ACTION"):
        parse_category_rule(bad)
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--category-rule", bad])


def test_unknown_or_repeated_names_fail_before_the_server_starts() -> None:
    with pytest.raises(InputError, match=r"'violense'.*known categories"):
        category_rules([parse_category_rule("violense=block")], None)
    with pytest.raises(InputError, match="twice"):
        category_rules([parse_category_rule("hate=block"), parse_category_rule("hate=flag")], None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_server_refuses_rules_its_head_cannot_score(tokenizer: Any) -> None:
    plain: SafetyModel = make_model(tokenizer, keyword=False)
    app = create_app(Settings(category_rules={"violence": CategoryRule(action="block")}), plain)
    with pytest.raises(Exception, match="did not start"), ServerThread(app):
        pass
    assert "no category outputs" in (app.state.guardrail.load_error or "")
