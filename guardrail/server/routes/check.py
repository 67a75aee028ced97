"""POST /v1/check: one verdict for a prompt (and a response), or verdicts for a batch of them."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import InputError, PromptInput, clean_text, encode_text, fit_prompt
from guardrail.server.errors import APIError, input_error
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import CheckItem, CheckRequest, CheckResults
from guardrail.server.state import ServerState, StateDep
from guardrail.server.tracing import span
from guardrail.types import GuardConfig, Verdict, label_for

router = APIRouter(tags=["check"])
log = logging.getLogger("guardrail.server")


def encode_check(model: SafetyModel, prompt_ids: list[int], response: str | None,
                 config: GuardConfig) -> tuple[list[int], ClsQuery]:
    """Token ids and the [CLS] query of one check, fitted to the context as `Guard` does."""
    tok = model.tokenizer
    response_ids = encode_text(tok, clean_text(response)) if response is not None else []
    budget = model.max_context - 1
    prompt_ids = fit_prompt(prompt_ids, budget // 2 if response_ids else budget)
    room = budget - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[len(response_ids) - room :]
    query = ClsQuery(seen=len(prompt_ids) + len(response_ids), prompt_len=len(prompt_ids),
                     window=config.window)
    return prompt_ids + response_ids, query


async def check_one(state: ServerState, prompt: PromptInput, response: str | None,
                    config: GuardConfig) -> Verdict:
    """Tokenise on the tokenizer thread (413 over the prompt budget), score in a batched pass."""
    return (await _score(state, [(prompt, response)], config))[0]


async def _score(state: ServerState, items: list[tuple[PromptInput, str | None]], config: GuardConfig,
                 fields: list[str] | None = None) -> list[Verdict]:
    """Verdicts for (prompt, response) pairs, in order.

    All items are tokenised in one tokenizer-thread call, then their steps are queued to the
    batcher together, shortest first, so they share forward passes with little padding.
    """
    assert state.batcher is not None
    batcher, model = state.batcher, state.batcher.model
    names = fields or ["prompt"] * len(items)
    started = time.perf_counter()
    for (prompt, _), field in zip(items, names, strict=True):
        state.precheck_prompt(prompt, field=field)

    def encode(prompt: PromptInput, response: str | None, field: str) -> tuple[list[int], ClsQuery]:
        try:
            ids = state.encode_prompt_within_budget(prompt, field=field)
        except InputError as exc:  # name the item it came from
            raise input_error(exc, field) from exc
        try:
            return encode_check(model, ids, response, config)
        except InputError as exc:
            where = field.rpartition(".")[0] + ".response" if "." in field else "response"
            raise input_error(exc, where) from exc

    def encode_all() -> list[tuple[list[int], ClsQuery]]:
        return [encode(prompt, response, field)
                for (prompt, response), field in zip(items, names, strict=True)]

    with span(state.tracer, "guardrail.check.tokenize", {"guardrail.items": len(items)}):
        encoded = await state.text.run(encode_all)
    order = sorted(range(len(items)), key=lambda i: len(encoded[i][0]))
    steps = {i: asyncio.ensure_future(batcher.step(StepRequest(model.new_cache(), *encoded[i], False)))
             for i in order}
    attributes = {"guardrail.items": len(items), "guardrail.tokens": sum(len(ids) for ids, _ in encoded)}
    try:
        with span(state.tracer, "guardrail.check.score", attributes):  # batching wait + forward pass
            done = await asyncio.gather(*steps.values())
        outputs: dict[int, StepOutput] = dict(zip(steps, done, strict=True))
    except BaseException:
        for step in steps.values():
            step.cancel()  # the client is gone or a pass failed: drop what has not run yet
        raise
    elapsed = time.perf_counter() - started
    verdicts = []
    for i in range(len(items)):
        score = float(outputs[i].score or 0.0)
        state.metrics.verdict_seconds.observe(elapsed, kind="check")
        verdicts.append(Verdict(label=label_for(score, config.threshold), score=score,
                                threshold=config.threshold, tokens=encoded[i][1].seen,
                                latency_ms=elapsed * 1000))
    log.debug("check %d item(s) prompt=%s", len(items), state.text_for_log(items[0][0]))
    return verdicts


async def check_batch(state: ServerState, items: list[CheckItem], config: GuardConfig) -> CheckResults:
    """One verdict per item, in the batch's order."""
    pairs: list[tuple[PromptInput, str | None]] = [(item.conversation, item.response) for item in items]
    fields = [f"batch.{i}.{'prompt' if item.prompt is not None else 'messages'}"
              for i, item in enumerate(items)]
    return CheckResults(results=await _score(state, pairs, config, fields))


@router.post("/v1/check", response_model=Verdict | CheckResults, responses=ERRORS)
async def check(body: CheckRequest, state: StateDep, request: Request) -> Verdict | CheckResults:
    """Is this request (and response) unsafe? With `batch`, one verdict per item, in order.

    Concurrent checks share forward passes. A client that hangs up cancels its work, so
    nothing it queued reaches the model.
    """
    batcher, _ = state.require()
    config = state.config_for(body.config)
    if body.batch is not None and len(body.batch) > state.settings.max_check_batch:
        raise APIError(413, f"batch has {len(body.batch)} items, over the limit of "
                       f"{state.settings.max_check_batch} (max_check_batch)", code="batch_too_large",
                       param="batch")
    batcher.admit()
    if body.batch is not None:
        return await unless_disconnected(request, check_batch(state, body.batch, config))
    field = "prompt" if body.prompt is not None else "messages"
    single = _score(state, [(body.conversation, body.response)], config, [field])
    return (await unless_disconnected(request, single))[0]
