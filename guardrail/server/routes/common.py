"""Response documentation shared by the routes (the OpenAPI spec lists every error shape)."""

from __future__ import annotations

from typing import Any

from guardrail.server.schemas import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed request (bad JSON, invalid UTF-8, invalid text)"),
        (401, "Missing or invalid API key"),
        (413, "Request body too large"),
        (422, "Wrong field types or values"),
        (429, "Model queue full; retry after Retry-After seconds"),
        (503, "Model not loaded yet"),
    )
}
SESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    404: {"model": ErrorResponse, "description": "Unknown or deleted session"},
    409: {"model": ErrorResponse, "description": "Session already closed or intercepted"},
    410: {"model": ErrorResponse, "description": "Session expired or evicted"},
}
