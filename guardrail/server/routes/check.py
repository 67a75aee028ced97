"""POST /v1/check: one verdict for a prompt (and a response), or verdicts for a batch of them."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import APIRouter, Request

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import PromptInput, clean_text, encode_text, fit_prompt
from guardrail.server.errors import APIError
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import CheckItem, CheckRequest, CheckResults
from guardrail.server.state import ServerState, StateDep
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


async def check_one(state: ServerState, prompt: PromptInput, response: str | None, config: GuardConfig,
                    *, field: str = "prompt") -> Verdict:
    """Tokenise on the tokenizer thread (413 over the prompt budget), score in a batched pass."""
    assert state.batcher is not None
    batcher = state.batcher
    started = time.perf_counter()
    prompt_ids = await state.prompt_ids(prompt, field=field)
    model = batcher.model
    ids, query = await state.text.run(lambda: encode_check(model, prompt_ids, response, config))
    out: StepOutput = await batcher.step(StepRequest(model.new_cache(), ids, query, False))
    score = float(out.score or 0.0)
    elapsed = time.perf_counter() - started
    state.metrics.verdict_seconds.observe(elapsed, kind="check")
    log.debug("check prompt=%s score=%.3f", state.text_for_log(prompt), score)
    return Verdict(label=label_for(score, config.threshold), score=score, threshold=config.threshold,
                   tokens=query.seen, latency_ms=elapsed * 1000)


async def check_batch(state: ServerState, items: list[CheckItem], config: GuardConfig) -> CheckResults:
    """Every item checked concurrently, so the batcher merges their passes; answers in order.

    Submitted shortest first: passes group steps of similar length, so little is padded.
    """
    order = sorted(range(len(items)), key=lambda i: _size(items[i]))
    tasks = {i: asyncio.ensure_future(check_one(state, items[i].conversation, items[i].response, config,
                                                field=f"batch.{i}.prompt"))
             for i in order}
    try:
        await asyncio.gather(*tasks.values())
    except BaseException:
        for task in tasks.values():
            task.cancel()  # one item refused or the client gone: the rest are not worth scoring
        raise
    return CheckResults(results=[tasks[i].result() for i in range(len(items))])


def _size(item: CheckItem) -> int:
    text = item.conversation if isinstance(item.conversation, str) else \
        "".join(m.content for m in item.conversation)
    return len(text) + len(item.response or "")


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
    return await unless_disconnected(request, check_one(state, body.conversation, body.response, config))
