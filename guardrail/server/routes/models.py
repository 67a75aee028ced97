"""GET /v1/models: the served model locally, the upstream's list in proxy mode."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from guardrail.server.errors import APIError
from guardrail.server.proxy import proxy_models
from guardrail.server.routes.common import ERRORS
from guardrail.server.state import ServerState, StateDep

router = APIRouter(tags=["openai"])
_STARTED = int(time.time())


def served_model(state: ServerState) -> dict[str, Any]:
    return {"id": state.settings.model_name, "object": "model", "created": _STARTED, "owned_by": "guardrail"}


@router.get("/v1/models", responses={**ERRORS, 502: {"description": "Upstream failed"}})
async def list_models(state: StateDep, request: Request,
                      authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """OpenAI's model list: `{"object": "list", "data": [...]}`."""
    if state.settings.upstream:
        return await proxy_models(state, authorization, request.headers)
    return {"object": "list", "data": [served_model(state)]}


@router.get("/v1/models/{model_id:path}", responses={**ERRORS, 404: {"description": "Unknown model"},
                                                     502: {"description": "Upstream failed"}})
async def get_model(model_id: str, state: StateDep, request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> dict[str, Any]:
    """One model: the served one locally, the upstream's answer in proxy mode."""
    if state.settings.upstream:
        return await proxy_models(state, authorization, request.headers, model_id)
    if model_id == state.settings.model_name:
        return served_model(state)
    raise APIError(404, f"model '{model_id}' is not served here", code="model_not_found", param="model")
