"""POST /v1/moderations: the OpenAI moderation API over the same [CLS] check.

Each input is checked as a request (one user turn) through the one check path, all inputs of a
call in one batched pass. The input rules and the verdict -> result rule live in
`guardrail.moderation`, shared with `Guard.moderations` and the sidecar clients. `flagged` is the
verdict's label (the binary gate and any `block` category rule); `categories` are the
categories that verdict flagged under the request's config.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import Field

from guardrail.moderation import (
    ModerationInputError,
    ModerationPart,
    ModerationResponse,
    fired_categories,
    moderation_response,
    moderation_texts,
)
from guardrail.server.errors import APIError, input_error
from guardrail.server.routes.check import score_checks
from guardrail.server.routes.common import ERRORS, unless_disconnected
from guardrail.server.schemas import ValidUnicode
from guardrail.server.state import StateDep
from guardrail.server.tracing import span
from guardrail.types import GuardConfig, PromptInput

router = APIRouter(tags=["moderations"])


class ModerationRequest(ValidUnicode):
    """The OpenAI request: `input` as a string, a list of strings, or a list of content parts."""

    input: str | list[str] | list[ModerationPart] = Field(
        description="Text to classify; a list of strings is answered with one result per item, in "
        "order; a list of content parts is one input (its text parts joined; image parts are refused).")
    model: str | None = Field(None, description="Accepted for compatibility; the served head answers.")
    config: GuardConfig | None = Field(
        None, description="Guardrail extension: per-request config (category rules, threshold), as on "
        "/v1/check; the OpenAI client never sends it.")


@router.post("/v1/moderations", response_model=ModerationResponse, responses=ERRORS)
async def moderations(body: ModerationRequest, state: StateDep, request: Request) -> ModerationResponse:
    """Classify text the way OpenAI's moderation endpoint does, with the guard's verdict."""
    batcher, _ = state.require()
    try:
        texts = moderation_texts(body.input)
    except ModerationInputError as exc:
        raise input_error(exc) from exc
    if len(texts) > state.settings.max_check_batch:
        raise APIError(413, f"input has {len(texts)} items, over the limit of "
                       f"{state.settings.max_check_batch} (max_check_batch)", code="batch_too_large",
                       param="input")
    config = state.config_for(body.config)
    batcher.admit()
    items: list[tuple[PromptInput, str | None]] = [(text, None) for text in texts]
    fields = ["input"] if isinstance(body.input, str) else [f"input.{i}" for i in range(len(texts))]
    with span(state.tracer, "guardrail.moderations", {"guardrail.items": len(items)}) as current:
        verdicts = await unless_disconnected(request, score_checks(state, items, config, fields))
        response = moderation_response(verdicts, state.settings.model_name)
        if current is not None and (names := fired_categories(response)):
            current.set_attribute("guardrail.categories", names)  # names only, never text
    return response
