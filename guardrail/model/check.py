"""The one-shot check, planned once: context fitting, one pass with one [CLS] query, the label.

`Guard.check_prompt` / `check_response` run `check_plan` in place (`run_check`); the sidecar's
`/v1/check` runs the same plan through its batcher. A batch of checks (`checks_plan`) scores
many conversations in one pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from guardrail.model.engine import StepOutput, StepRequest
from guardrail.model.masks import ClsQuery
from guardrail.model.plans import ForwardAll, Plan, Tokenize, run_in_place
from guardrail.model.prompts import PromptInput, clean_text, encode_prompt, encode_text, fit_prompt
from guardrail.types import GuardConfig, Verdict, categories_fired, label_for

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel

#: One check's input: the conversation, and the response to judge (None: the prompt alone).
CheckInput = tuple[PromptInput, str | None]


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


def verdict_for(score: float, config: GuardConfig, tokens: int, started: float,
                categories: dict[str, float] | None = None,
                category_thresholds: dict[str, float] | None = None) -> Verdict:
    """The verdict of one check: the binary label rule, then the config's category rules.

    Both rules live in `guardrail.types` (`label_for`, `categories_fired`); a fired `block`
    category makes the verdict unsafe on its own, the binary gate stays as it is.
    """
    categories = categories or {}
    fired = categories_fired(categories, category_thresholds or {}, config.categories)
    label = "unsafe" if fired.blocked else label_for(score, config.threshold)
    return Verdict(label=label, score=score, threshold=config.threshold,
                   tokens=tokens, latency_ms=(time.perf_counter() - started) * 1000,
                   categories=categories, flagged_categories=fired.flagged,
                   blocked_categories=fired.blocked)


#: Encodes the i-th check input (a driver may add its own limits, e.g. the server's token budget).
CheckEncoder = Callable[[int, PromptInput, str | None], tuple[list[int], ClsQuery]]


def checks_plan(model: SafetyModel, items: Sequence[CheckInput], config: GuardConfig, *,
                encode: CheckEncoder | None = None) -> Plan[list[Verdict]]:
    """Many one-shot checks: tokenised together, scored shortest first in one pass; verdicts in order."""
    started = time.perf_counter()
    def default_encoder(_i: int, prompt: PromptInput, response: str | None) -> tuple[list[int], ClsQuery]:
        return encode_check(model, prompt, response, config)

    encoder: CheckEncoder = encode or default_encoder
    encoded: list[tuple[list[int], ClsQuery]] = yield Tokenize(
        lambda: [encoder(i, prompt, response) for i, (prompt, response) in enumerate(items)])
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))  # little padding per pass
    requests = [StepRequest(model.new_cache(), encoded[i][0], encoded[i][1]) for i in order]
    outputs: list[StepOutput] = yield ForwardAll(requests)
    by_item = dict(zip(order, outputs, strict=True))
    limits = model.head.category_thresholds
    return [verdict_for(float(by_item[i].score or 0.0), config, query.seen, started,
                        by_item[i].categories, limits)
            for i, (_, query) in enumerate(encoded)]


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
