"""Errors the API returns, all as JSON bodies in the OpenAI error shape.

`{"error": {"message", "type", "code", "param"}}`: OpenAI clients already know how to read
it, and every 4xx names the problem so a caller can fix its request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from guardrail.model.prompts import InputError
from guardrail.server.batcher import BatcherStoppedError, QueueFullError

log = logging.getLogger("guardrail.server")


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(message: str, *, type: str = "invalid_request_error", code: str | None = None,
               param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "code": code, "param": param}}


def error_response(status: int, message: str, *, type: str = "invalid_request_error",
                   code: str | None = None, headers: dict[str, str] | None = None,
                   param: str | None = None) -> JSONResponse:
    return APIError(status, message, type=type, code=code, headers=headers, param=param).response()


def input_error(exc: InputError, field: str | None = None) -> APIError:
    """The one mapping of the engine's input errors.

    A limit (the engine's `LimitError`, or any `InputError` carrying `limit`) is 413 naming it;
    any other input the engine cannot work on is 422 naming the problem. `field`, when the
    caller knows it, is named in front of the message.
    """
    limit = getattr(exc, "limit", None)
    message = f"{field}: {exc}" if field else str(exc)
    if limit is not None or any(cls.__name__ == "LimitError" for cls in type(exc).__mro__):
        if limit is not None and str(limit) not in message:
            message = f"{message} (limit: {limit})"
        return APIError(413, message, code=getattr(exc, "code", None) or "limit_exceeded",
                        param=field or getattr(exc, "param", None))
    return APIError(422, message, code="invalid_input", param=field or getattr(exc, "param", None))


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        ctx: Any = errors[0].get("ctx") or {}
        return error_response(400, f"malformed JSON: {ctx.get('error', 'cannot parse body')}",
                              code="malformed_json")
    not_object = ("model_attributes_type", "dict_type", "missing")
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in not_object for e in errors):
        return error_response(400, "request body must be a JSON object "
                              "(sent with Content-Type: application/json)", code="malformed_json")
    parts, params = [], []
    for e in errors[:5]:
        path = [str(p) for p in e.get("loc", ()) if p != "body"]
        field = (e.get("ctx") or {}).get("field")  # set by validators that check a whole body
        where = ".".join([*path, str(field)] if field else path) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid')}".removeprefix("body: "))
        params.append(where)
    return error_response(422, "; ".join(parts), code="invalid_fields", param=params[0] if params else None)


def add_error_handlers(app: FastAPI) -> None:
    """Every failure a route can raise, answered in one shape; 4xx name the problem."""

    @app.exception_handler(APIError)
    async def api_error(_request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(InputError)
    async def bad_input(_request: Request, exc: InputError) -> JSONResponse:
        return input_error(exc).response()

    @app.exception_handler(QueueFullError)
    async def queue_full(_request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(429, str(exc), type="rate_limit_error", code="queue_full",
                              headers={"Retry-After": str(max(1, round(exc.retry_after_s)))})

    @app.exception_handler(BatcherStoppedError)
    async def stopped(_request: Request, exc: BatcherStoppedError) -> JSONResponse:
        return error_response(503, str(exc), type="server_error", code="shutting_down",
                              headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, str(exc.detail), code=code,
                              headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}", type="server_error",
                              code="internal_error")
