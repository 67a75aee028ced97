"""POST /v1/check: one verdict for a prompt (and a response), or verdicts for a batch of them."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request

from guardrail.model.check import checks_plan, fit_check
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import InputError, PromptInput
from guardrail.server.driver import run_batched
from guardrail.server.errors import APIError, input_error
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import CheckItem, CheckRequest, CheckResults
from guardrail.server.state import ServerState, StateDep
from guardrail.server.tracing import span
from guardrail.types import GuardConfig, Verdict

router = APIRouter(tags=["check"])
log = logging.getLogger("guardrail.server")


async def check_one(state: ServerState, prompt: PromptInput, response: str | None,
                    config: GuardConfig) -> Verdict:
    """Tokenise on the tokenizer thread (413 over the prompt budget), score in a batched pass."""
    return (await score_checks(state, [(prompt, response)], config))[0]


async def score_checks(state: ServerState, items: list[tuple[PromptInput, str | None]], config: GuardConfig,
                 fields: list[str] | None = None) -> list[Verdict]:
    """Verdicts for (prompt, response) pairs, in order.

    All items are tokenised in one tokenizer-thread call, then their steps are queued to the
    batcher together, shortest first, so they share forward passes with little padding.
    """
    batcher, _ = state.require()
    model = batcher.model
    names = fields or ["prompt"] * len(items)
    for (prompt, _), field in zip(items, names, strict=True):
        state.precheck_prompt(prompt, field=field)

    def encode(i: int, prompt: PromptInput, response: str | None) -> tuple[list[int], ClsQuery]:
        """The engine's check fitting, over prompt ids within the server's token budget."""
        field = names[i]
        try:
            ids = state.encode_prompt_within_budget(prompt, field=field)
        except InputError as exc:  # name the item it came from
            raise input_error(exc, field) from exc
        try:
            return fit_check(model, ids, response, config)
        except InputError as exc:
            where = field.rpartition(".")[0] + ".response" if "." in field else "response"
            raise input_error(exc, where) from exc

    with span(state.tracer, "guardrail.check", {"guardrail.items": len(items)}):
        verdicts = await run_batched(batcher, state.text, checks_plan(model, items, config, encode=encode))
    for verdict in verdicts:
        state.metrics.verdict_seconds.observe(verdict.latency_ms / 1000, kind="check")
    log.debug("check %d item(s) prompt=%s", len(items), state.text_for_log(items[0][0]))
    return verdicts


async def check_batch(state: ServerState, items: list[CheckItem], config: GuardConfig) -> CheckResults:
    """One verdict per item, in the batch's order."""
    pairs: list[tuple[PromptInput, str | None]] = [(item.conversation, item.response) for item in items]
    fields = [f"batch.{i}.{'prompt' if item.prompt is not None else 'messages'}"
              for i, item in enumerate(items)]
    return CheckResults(results=await score_checks(state, pairs, config, fields))


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
    single = score_checks(state, [(body.conversation, body.response)], config, [field])
    return (await unless_disconnected(request, single))[0]
