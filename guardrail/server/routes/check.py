"""POST /v1/check: one verdict for a prompt, or a prompt and a response."""

from __future__ import annotations

import logging
import time

from fastapi import APIRouter

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import PromptInput, clean_text, encode_prompt, encode_text, fit_prompt
from guardrail.server.routes.common import ERRORS
from guardrail.server.schemas import CheckRequest
from guardrail.server.state import StateDep
from guardrail.types import GuardConfig, Verdict, label_for

router = APIRouter(tags=["check"])
log = logging.getLogger("guardrail.server")


def encode_check(model: SafetyModel, prompt: PromptInput, response: str | None,
                 config: GuardConfig) -> tuple[list[int], ClsQuery]:
    """Token ids and the [CLS] query of one check, fitted to the context as `Guard` does."""
    tok = model.tokenizer
    response_ids = encode_text(tok, clean_text(response)) if response is not None else []
    budget = model.max_context - 1
    prompt_ids = fit_prompt(encode_prompt(tok, prompt), budget // 2 if response_ids else budget)
    room = budget - len(prompt_ids)
    if len(response_ids) > room:
        response_ids = response_ids[len(response_ids) - room :]
    query = ClsQuery(seen=len(prompt_ids) + len(response_ids), prompt_len=len(prompt_ids),
                     window=config.window)
    return prompt_ids + response_ids, query


@router.post("/v1/check", response_model=Verdict, responses=ERRORS)
async def check(body: CheckRequest, state: StateDep) -> Verdict:
    """Is this request (and response) unsafe? Concurrent checks share forward passes."""
    batcher, _ = state.require()
    config = state.config_for(body.config)
    batcher.admit()
    started = time.perf_counter()
    model = batcher.model
    ids, query = await state.text.run(lambda: encode_check(model, body.conversation, body.response, config))
    out: StepOutput = await batcher.step(StepRequest(model.new_cache(), ids, query, False))
    score = float(out.score or 0.0)
    elapsed = time.perf_counter() - started
    state.metrics.verdict_seconds.observe(elapsed, kind="check")
    log.debug("check prompt=%s score=%.3f", state.text_for_log(body.conversation), score)
    return Verdict(label=label_for(score, config.threshold), score=score,
                   threshold=config.threshold, tokens=query.seen, latency_ms=elapsed * 1000)
