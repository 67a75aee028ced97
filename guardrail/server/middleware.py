"""Pure ASGI middleware: request metrics, host allow-list, bearer auth, body size and UTF-8 limits.

Written at the ASGI level so streaming responses pass through untouched and a rejected
request never reaches the routes (or the model).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import time
from collections.abc import Sequence
from typing import Any

from starlette.routing import BaseRoute, Mount, Route, Router, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.server.errors import error_body
from guardrail.server.metrics import Metrics

log = logging.getLogger("guardrail.server")
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
PUBLIC_PREFIXES = ("/static/",)  # the chat page and its assets; they hold no data
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})


def route_templates(routes: Sequence[BaseRoute], prefix: str = "") -> list[str]:
    """Every path template the app serves (`/v1/sessions/{session_id}/chunks`), included
    routers and mounts too."""
    found: list[str] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # a FastAPI router included under a prefix
            context = getattr(route, "include_context", None)
            found += route_templates(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        elif isinstance(route, Mount):
            found.append(prefix + route.path + "/{path:path}")
        elif isinstance(route, Route):
            found.append(prefix + route.path)
    return found


class RouteLabeler:
    """The matched route template of a path, or `unmatched`: metric labels and log lines stay
    few and never carry what a client put in a path (ids, junk, control characters)."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self._patterns: list[tuple[re.Pattern[str], str]] | None = None

    def __call__(self, path: str) -> str:
        if self._patterns is None:  # routes are all registered by the first request
            self._patterns = [(compile_path(t)[0], t.replace("/{path:path}", "/{path}"))
                              for t in route_templates(self.router.routes)]
        for pattern, template in self._patterns:
            if pattern.match(path):
                return template
        return UNMATCHED


def escape_for_log(text: str, limit: int = 200) -> str:
    """A client-chosen string made safe for one log line: control characters escaped, cut short."""
    return ascii(text[:limit])[1:-1]


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, labeler: RouteLabeler) -> None:
        self.app = app
        self.metrics = metrics
        self.labeler = labeler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        route = self.labeler(scope["path"])
        method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.metrics.request_seconds.observe(time.perf_counter() - started, route=route)
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.requests.inc(method=method, route=route, status=str(status))
            shown = route if route != UNMATCHED else f"{UNMATCHED} '{escape_for_log(scope['path'])}'"
            log.info("%s %s -> %d (%.1f ms)", method, shown, status, (time.perf_counter() - started) * 1000)


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class HostAllowListMiddleware:
    """Without an API key, answer only requests addressed to an allowed host name (421 otherwise).

    A page on another site can make a browser resolve its own name to 127.0.0.1 (DNS
    rebinding) and then call this server as if same-origin; its requests still carry that
    site's name in `Host`, so an allow-list of the names this server is known by stops them.
    The health probes stay open (they hold no data). `*` in the list turns the check off.
    """

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower().strip("[]") for h in allowed)
        self.any = "*" in self.allowed

    def _host(self, scope: Scope) -> str:
        raw = dict(scope["headers"]).get(b"host", b"").decode("latin-1").strip().lower()
        if raw.startswith("["):  # [::1]:8000
            return raw[1:].partition("]")[0]
        return raw.rpartition(":")[0] if raw.count(":") == 1 else raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        host = self._host(scope)
        if host not in self.allowed:
            message = (f"host {escape_for_log(host, 100)!r} is not served here; without an API key only "
                       "the allowed host names are (guardrail serve --allowed-host NAME)")
            await send_json(send, 421, error_body(message, code="host_not_allowed"))
            return
        await self.app(scope, receive, send)


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
