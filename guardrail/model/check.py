"""The one-shot check, planned once: context fitting, one pass with its [CLS] queries, the label.

`Guard.check_prompt` / `check_response` run `check_plan` in place (`run_check`); the sidecar's
`/v1/check` runs the same plan through its batcher. A batch of checks (`checks_plan`) scores
many conversations in one pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from guardrail.model.engine import StepOutput, StepRequest
from guardrail.model.masks import ClsQuery
from guardrail.model.plans import ForwardAll, Plan, Tokenize, run_in_place
from guardrail.model.policy import CheckSchedule, TauPolicy
from guardrail.model.prompts import (
    InputError,
    PromptInput,
    clean_text,
    encode_prompt,
    encode_text,
    fit_prompt,
)
from guardrail.types import CategoryRule, GuardConfig, Verdict, categories_fired, label_for, union_names

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel

#: One check's input: the conversation, and the response to judge (None: the prompt alone).
CheckInput = tuple[PromptInput, str | None]


class UnknownCategoryError(InputError):
    """A category rule names a category the head does not score (the server answers 422)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def validate_categories(rules: Mapping[str, CategoryRule], known: Collection[str], *,
                        field: str = "config.categories") -> None:
    """Every rule must name one of the head's categories: a misspelt name would silently never fire.

    The one check of category names; the engine's plans (checks, sessions, generation) and the
    server's config and start-up all call it. `known` is `model.head.category_names`.
    """
    unknown = [name for name in rules if name not in known]
    if not unknown:
        return
    listed = ", ".join(known) if known else "none: this head has no category outputs"
    names = ", ".join(repr(name) for name in unknown)
    raise UnknownCategoryError(f"{field} names unknown categor{'ies' if len(unknown) > 1 else 'y'} {names}; "
                               f"known categories: {listed}", param=f"{field}.{unknown[0]}")


def check_categories(model: SafetyModel, config: GuardConfig) -> None:
    """`validate_categories` for a config against a model's head."""
    validate_categories(config.categories, model.head.category_names)


def encode_check(model: SafetyModel, prompt: PromptInput, response: str | None,
                 config: GuardConfig) -> tuple[list[int], ClsQuery]:
    """Token ids and the [CLS] query of one check, fitted to the context (see `fit_check`)."""
    return fit_check(model, encode_prompt(model.tokenizer, prompt), response, config)


def fit_check(model: SafetyModel, prompt_ids: list[int], response: str | None,
              config: GuardConfig) -> tuple[list[int], ClsQuery]:
    """Token ids and the [CLS] query of one check over an encoded prompt, fitted to the context.

    The prompt keeps its start and its end, as training fits long prompts (`fit_prompt`),
    in half the context when a response follows; the response keeps its most recent tokens.
    An empty response, or one that is not valid text, is an `InputError`.
    """
    response_ids = encode_text(model.tokenizer, clean_text(response)) if response is not None else []
    budget = model.max_context - 1
    prompt_ids = fit_prompt(prompt_ids, budget // 2 if response_ids else budget)
    room = budget - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[len(response_ids) - room :]
    query = ClsQuery(seen=len(prompt_ids) + len(response_ids), prompt_len=len(prompt_ids),
                     window=config.window)
    return prompt_ids + response_ids, query


class CheckJudgement(NamedTuple):
    """One check under a config: unsafe (binary gate or a fired `block` category), and what fired."""

    unsafe: bool
    flagged: list[str]
    blocked: list[str]


def judge_check(score: float, config: GuardConfig, categories: Mapping[str, float] | None = None,
                category_thresholds: Mapping[str, float] | None = None) -> CheckJudgement:
    """The one rule for one check: the binary label, then the config's category rules.

    Every surface calls it (one-shot verdicts, moderated streams, generation); the two rules
    themselves live in `guardrail.types` (`label_for`, `categories_fired`).
    """
    fired = categories_fired(categories or {}, category_thresholds or {}, config.categories)
    unsafe = bool(fired.blocked) or label_for(score, config.threshold) == "unsafe"
    return CheckJudgement(unsafe, fired.flagged, fired.blocked)


def record_check(policy: TauPolicy, score: float, judged: CheckJudgement) -> bool:
    """Feed one judged check to tau (True: act now). A blocked category counts as an unsafe score."""
    return policy.update(max(score, policy.threshold) if judged.blocked else score)


def verdict_for(score: float, config: GuardConfig, tokens: int, started: float,
                categories: dict[str, float] | None = None,
                category_thresholds: dict[str, float] | None = None) -> Verdict:
    """The verdict of one check: the binary label rule, then the config's category rules.

    Both rules live in `guardrail.types` (`label_for`, `categories_fired`); a fired `block`
    category makes the verdict unsafe on its own, the binary gate stays as it is.
    """
    categories = categories or {}
    judged = judge_check(score, config, categories, category_thresholds)
    return Verdict(label="unsafe" if judged.unsafe else "safe", score=score, threshold=config.threshold,
                   tokens=tokens, latency_ms=(time.perf_counter() - started) * 1000,
                   categories=categories, flagged_categories=judged.flagged,
                   blocked_categories=judged.blocked,
                   category_thresholds={name: float((category_thresholds or {}).get(name, 0.5))
                                        for name in categories})


#: Encodes the i-th check input (a driver may add its own limits, e.g. the server's token budget).
CheckEncoder = Callable[[int, PromptInput, str | None], tuple[list[int], ClsQuery]]


def response_queries(final: ClsQuery, config: GuardConfig) -> list[ClsQuery]:
    """The [CLS] queries a moderated stream of this response would run: its schedule's
    positions (`CheckSchedule`), then the covering check at the end. A prompt alone: one query.
    """
    length = final.seen - final.prompt_len
    if length <= 0:
        return [final]
    positions = CheckSchedule(config.strategy, config.period).positions(0, length)
    return [replace(final, seen=final.prompt_len + p) for p in positions if p < length] + [final]


def stream_verdict(out: StepOutput, queries: Sequence[ClsQuery], config: GuardConfig,
                   category_thresholds: Mapping[str, float], started: float) -> Verdict:
    """The verdict of a response read at every scheduled position, by the moderated stream's rule.

    Unsafe when tau consecutive checks are unsafe anywhere (the stream would have been cut
    there) or when the covering check at the end is; so harm followed by benign text stays
    flagged, and `check_response` agrees with a session fed the same text. The verdict carries
    the deciding check's score and categories, and every category that fired on the way.
    """
    policy = TauPolicy.from_config(config)
    fired: list[str] = []
    last = len(queries) - 1
    for i, (score, categories) in enumerate(zip(out.scores, out.category_scores, strict=True)):
        judged = judge_check(score, config, categories, category_thresholds)
        fired = union_names(fired, judged.flagged)
        acted = record_check(policy, score, judged)
        if acted or i == last:
            verdict = verdict_for(score, config, queries[last].seen, started, dict(categories),
                                  dict(category_thresholds))
            update: dict[str, object] = {"flagged_categories": fired}
            if acted:
                update["label"] = "unsafe"
            return verdict.model_copy(update=update)
    raise AssertionError("unreachable: the last check always decides")


def checks_plan(model: SafetyModel, items: Sequence[CheckInput], config: GuardConfig, *,
                encode: CheckEncoder | None = None) -> Plan[list[Verdict]]:
    """Many one-shot checks: tokenised together, scored shortest first in one pass; verdicts in order.

    A prompt gets one [CLS] query; a response gets one at every position its moderated stream
    would check (`response_queries`), all in the same pass, judged by `stream_verdict`.
    """
    started = time.perf_counter()
    check_categories(model, config)
    def default_encoder(_i: int, prompt: PromptInput, response: str | None) -> tuple[list[int], ClsQuery]:
        return encode_check(model, prompt, response, config)

    encoder: CheckEncoder = encode or default_encoder
    encoded: list[tuple[list[int], ClsQuery]] = yield Tokenize(
        lambda: [encoder(i, prompt, response) for i, (prompt, response) in enumerate(items)])
    queries = [response_queries(query, config) for _, query in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # little padding per pass
    requests = [StepRequest(model.new_cache(), encoded[i][0], checks=queries[i]) for i in order]
    outputs: list[StepOutput] = yield ForwardAll(requests)
    by_item = dict(zip(order, outputs, strict=True))
    limits = model.head.category_thresholds
    return [stream_verdict(by_item[i], queries[i], config, limits, started) for i in range(len(encoded))]


def check_plan(model: SafetyModel, prompt: PromptInput, response: str | None,
               config: GuardConfig) -> Plan[Verdict]:
    """One check of a prompt (and, if given, the response to it)."""
    verdicts = yield from checks_plan(model, [(prompt, response)], config)
    return verdicts[0]


def run_check(model: SafetyModel, prompt: PromptInput, response: str | None, config: GuardConfig) -> Verdict:
    """One check, in place (the embedded guard)."""
    return run_in_place(model, check_plan(model, prompt, response, config))


def run_checks(model: SafetyModel, items: Sequence[CheckInput], config: GuardConfig) -> list[Verdict]:
    """Many checks in one pass, in place."""
    return run_in_place(model, checks_plan(model, items, config))
