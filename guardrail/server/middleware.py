"""Pure ASGI middleware: request metrics, bearer auth, body size and UTF-8 limits.

Written at the ASGI level so streaming responses pass through untouched and a rejected
request never reaches the routes (or the model).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.server.errors import error_body
from guardrail.server.metrics import Metrics

log = logging.getLogger("guardrail.server")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
PUBLIC_PREFIXES = ("/static/",)  # the chat page and its assets; they hold no data
_SESSION_PATH = re.compile(r"^/v1/sessions/[^/]+")


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def route_label(path: str) -> str:
    """A low-cardinality route name: session ids are replaced by a placeholder."""
    return _SESSION_PATH.sub("/v1/sessions/{id}", path)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        route = route_label(scope["path"])

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.request_seconds.observe(time.perf_counter() - started, route=route)
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.requests.inc(method=scope["method"], route=route, status=str(status))
            log.info("%s %s -> %d (%.1f ms)", scope["method"], route, status,
                     (time.perf_counter() - started) * 1000)


class AuthMiddleware:
    """Bearer API key on every path but the health probes and the chat page (GET)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        page = scope.get("method") in ("GET", "HEAD") and (path == "/" or path.startswith(PUBLIC_PREFIXES))
        public = path in PUBLIC_PATHS or page
        if scope["type"] != "http" or self.api_key is None or public:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            message = "missing or invalid API key (send 'Authorization: Bearer <key>')"
            body = error_body(message, type="authentication_error", code="invalid_api_key")
            await send_json(send, 401, body, {"WWW-Authenticate": "Bearer"})
            return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reject bodies over the size limit (413) and bodies that are not UTF-8 (400).

    The body is read here once and replayed to the route; later `receive` calls go to the
    server, so a route can still notice the client disconnecting.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        too_big = f"request body exceeds the limit of {self.max_bytes} bytes"
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await send_json(send, 413, error_body(too_big, code="body_too_large"))
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_json(send, 413, error_body(too_big, code="body_too_large"))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            message_text = f"request body is not valid UTF-8 (byte {exc.start})"
            await send_json(send, 400, error_body(message_text, code="invalid_utf8"))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
