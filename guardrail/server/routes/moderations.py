"""POST /v1/moderations: the OpenAI moderation API over the same [CLS] check.

Each input is checked as a request (one user turn) through the one check path, all inputs of a
call in one batched pass. `flagged` is the calibrated binary verdict, the signal every other
surface acts on; `categories` are the per-category outputs of the same pass against their own
thresholds, reported next to it (see the model card for how far they can be trusted).
"""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from guardrail.model.head import MODERATION_CATEGORIES
from guardrail.server.errors import APIError
from guardrail.server.routes.check import score_checks
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import ValidUnicode
from guardrail.server.state import StateDep
from guardrail.types import PromptInput, Verdict, label_for

router = APIRouter(tags=["moderations"])


class ModerationTextPart(BaseModel):
    type: Literal["text"]
    text: str


class ModerationRequest(ValidUnicode):
    """The OpenAI request: `input` as a string, a list of strings, or a list of text parts."""

    input: str | list[str] | list[ModerationTextPart] = Field(
        description="Text to classify; a list is answered with one result per item, in order.")
    model: str | None = Field(None, description="Accepted for compatibility; the served head answers.")


class ModerationResult(BaseModel):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    id: str
    model: str
    results: list[ModerationResult]


def moderation_inputs(body: ModerationRequest) -> list[str]:
    """The texts to classify: a string, each string of a list, or the text parts joined."""
    if isinstance(body.input, str):
        return [body.input]
    if body.input and isinstance(body.input[0], ModerationTextPart):
        return ["".join(part.text for part in body.input if isinstance(part, ModerationTextPart))]
    return [text for text in body.input if isinstance(text, str)]


def moderation_result(verdict: Verdict, thresholds: dict[str, float]) -> ModerationResult:
    """One OpenAI result from one verdict (every public category name present)."""
    scores = {name: float(verdict.categories.get(name, 0.0)) for name in MODERATION_CATEGORIES}
    fired = {name: label_for(p, thresholds.get(name, 0.5)) == "unsafe" and name in verdict.categories
             for name, p in scores.items()}
    return ModerationResult(flagged=verdict.unsafe, categories=fired, category_scores=scores,
                            category_applied_input_types={name: ["text"] for name in MODERATION_CATEGORIES})


@router.post("/v1/moderations", response_model=ModerationResponse, responses=ERRORS)
async def moderations(body: ModerationRequest, state: StateDep, request: Request) -> ModerationResponse:
    """Classify text the way OpenAI's moderation endpoint does, with the guard's verdict."""
    batcher, _ = state.require()
    texts = moderation_inputs(body)
    if not texts:
        raise APIError(422, "input must not be empty", code="invalid_input", param="input")
    if len(texts) > state.settings.max_check_batch:
        raise APIError(413, f"input has {len(texts)} items, over the limit of "
                       f"{state.settings.max_check_batch} (max_check_batch)", code="batch_too_large",
                       param="input")
    config = state.config_for(None)
    batcher.admit()
    items: list[tuple[PromptInput, str | None]] = [(text, None) for text in texts]
    fields = ["input"] if isinstance(body.input, str) else [f"input.{i}" for i in range(len(texts))]
    verdicts = await unless_disconnected(request, score_checks(state, items, config, fields))
    thresholds = batcher.model.head.category_thresholds
    return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=state.settings.model_name,
                              results=[moderation_result(v, thresholds) for v in verdicts])
