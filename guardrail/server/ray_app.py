"""The sidecar as a Ray Serve application: N model replicas behind one HTTP endpoint.

Scale-out wraps the server, it does not fork it. Each `GuardrailReplica` runs the unchanged
app of `create_app` (its routes, middleware, batcher and session store) in process; a thin
`GuardrailIngress` deployment forwards every HTTP request to a replica through a deployment
handle and streams the answer back. Only the serving entry point imports this module, so
Ray stays an optional extra (`pip install 'guardrail[ray]'`).

Session affinity: a replica mints session ids that name it (`sess_<replica>.<token>`), and
`SessionAffinityRouter` sends every request for such an id to that replica. Anything else
(checks, generation, new sessions) goes to the less loaded of two random replicas. When the
owning replica is gone, the request lands elsewhere and is answered 410; the client SDK
then re-creates the session and replays the text it had sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.config import AutoscalingConfig
from ray.serve.request_router import PendingRequest, RequestRouter, RunningReplica
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from guardrail.model.engine import SafetyModel
from guardrail.server.errors import error_body
from guardrail.server.middleware import send_json
from guardrail.server.settings import Settings
from guardrail.server.state import ServerState

log = logging.getLogger("guardrail.server")
REPLICA_HEADER = "x-guardrail-replica"
APP_NAME = "guardrail"
_SESSION_ID = re.compile(r"^/v1/sessions/(sess_([A-Za-z0-9]+)\.[A-Za-z0-9_-]+)(?:/|$)")
ModelFactory = Callable[[], SafetyModel]


def session_owner(path: str) -> tuple[str, str] | None:
    """(session id, owning replica) for a path naming a replica-minted session, else None."""
    match = _SESSION_ID.match(path)
    return (match.group(1), match.group(2)) if match else None


def gone_message(session_id: str, owner: str) -> str:
    return (f"session {session_id} is gone (its replica {owner} is no longer serving: replica lost "
            "or scaled down); create a new session and replay the text already sent")


# -- routing ----------------------------------------------------------------------------------------
class SessionAffinityRouter(RequestRouter):
    """Where each request goes.

    - A session's requests: the replica that holds its KV cache, waiting for it when busy.
    - A new session: the replica holding the fewest sessions (reported by the replicas every
      couple of seconds, plus those placed here since), since a session stays for its life.
    - Anything else: the less loaded of two random replicas, as Ray Serve's default.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self._placed: dict[str, int] = {}  # sessions placed since the replica's last report
        self._reports: dict[str, int] = {}

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        request = _forwarded(pending_request)
        owner = request.get("owner")
        if owner is not None:
            for replica in candidate_replicas:
                if replica.replica_id.unique_id == owner:
                    return [[replica]]  # never spills over: only this replica has the cache
            # The owner is gone: any replica answers 410, since none holds the session.
        if request.get("creates_session") and candidate_replicas:
            ranked = sorted(candidate_replicas, key=lambda r: (self._sessions(r), random.random()))
            uid = ranked[0].replica_id.unique_id
            self._placed[uid] = self._placed.get(uid, 0) + 1
            return [[r] for r in ranked]
        return [random.sample(candidate_replicas, min(2, len(candidate_replicas)))]

    def _sessions(self, replica: RunningReplica) -> int:
        uid = replica.replica_id.unique_id
        stats = replica.routing_stats or {}
        reported = int(stats.get("sessions", 0))
        stamp = int(stats.get("reports", -1))
        if self._reports.get(uid) != stamp:  # a fresh report already counts what was placed
            self._reports[uid] = stamp
            self._placed[uid] = 0
        return reported + self._placed.get(uid, 0)


def _forwarded(pending_request: PendingRequest | None) -> dict[str, Any]:
    if pending_request is None or not pending_request.args:
        return {}
    request = pending_request.args[0]
    return request if isinstance(request, dict) else {}


# -- model replica ------------------------------------------------------------------------------------
class ReplicaMiddleware:
    """Names the replica on every response and answers 410 for sessions minted elsewhere."""

    def __init__(self, app: ASGIApp, replica: str) -> None:
        self.app = app
        self.replica = replica

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = (REPLICA_HEADER.encode(), self.replica.encode())
        found = session_owner(scope.get("path", ""))
        if found is not None and found[1] != self.replica:
            await send_json(send, 410, error_body(gone_message(*found), code="session_gone"),
                            {REPLICA_HEADER: self.replica})
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        await self.app(scope, receive, named)


def load_factory(spec: str | ModelFactory | None) -> ModelFactory | None:
    """A model factory from a callable or an import path `module:function` (for config files)."""
    if spec is None or callable(spec):
        return spec
    module, _, name = spec.partition(":")
    factory: ModelFactory = getattr(importlib.import_module(module), name)
    return factory


class GuardrailReplica:
    """One model replica: the sidecar app with its model, batcher and session store."""

    async def __init__(  # type: ignore[misc]  # Ray Serve awaits async constructors
        self, settings: dict[str, Any], model_factory: str | ModelFactory | None = None
    ) -> None:
        from guardrail.server.app import create_app

        context = serve.get_replica_context()
        self.replica: str = context.replica_id.unique_id
        factory = load_factory(model_factory)
        model = await asyncio.to_thread(factory) if factory is not None else None
        app = create_app(Settings.from_env(**settings), model)
        self.state: ServerState = app.state.guardrail
        self.state.session_id_prefix = f"sess_{self.replica}."  # ids name their replica
        self.app: ASGIApp = ReplicaMiddleware(app, self.replica)
        self._reports = 0
        self._lifespan = contextlib.AsyncExitStack()
        await self._lifespan.enter_async_context(app.router.lifespan_context(app))
        log.info("replica %s started", self.replica)

    async def handle(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Serve one forwarded HTTP request: the response start with the first body part, then
        the rest as it is produced (server-sent events stream through)."""
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": request["method"], "scheme": "http", "path": request["path"],
            "raw_path": request["path"].encode(), "query_string": request["query"],
            "root_path": "", "headers": request["headers"], "client": request.get("client"),
            "server": None, "state": {},
        }
        first: dict[str, Any] | None = None
        async for message in _call_asgi(self.app, scope, request["body"]):
            if message["type"] == "http.response.start":
                first = {"status": message["status"], "headers": list(message.get("headers", []))}
                continue
            if message["type"] != "http.response.body":
                continue
            part = {"body": message.get("body", b""), "more": message.get("more_body", False)}
            if first is not None:
                part, first = {**first, **part}, None
            yield part
        if first is not None:  # a start without a body
            yield {**first, "body": b"", "more": False}

    def record_routing_stats(self) -> dict[str, int]:
        """Sessions held, for placing new sessions on the least occupied replica."""
        self._reports += 1
        sessions = self.state.sessions
        return {"sessions": len(sessions) if sessions is not None else 0, "reports": self._reports}

    async def check_health(self) -> None:
        """Serve replaces a replica whose model failed to load or whose worker stopped."""
        if self.state.load_error:
            raise RuntimeError(f"model failed to load: {self.state.load_error}")
        batcher = self.state.batcher
        if batcher is not None and not batcher.running:
            raise RuntimeError("the model worker stopped")

    async def __del__(self) -> None:
        with contextlib.suppress(Exception):
            await self._lifespan.aclose()


async def _call_asgi(app: ASGIApp, scope: Scope, body: bytes) -> AsyncIterator[Message]:
    """Run an ASGI app on one buffered request body and yield what it sends.

    The app sees a disconnect only when the caller stops reading, as it would under uvicorn.
    """
    messages: asyncio.Queue[Message | None] = asyncio.Queue()
    disconnected = asyncio.Event()
    body_sent = False

    async def receive() -> Message:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except Exception:  # the app already answered 500; Starlette re-raises for the server
            log.debug("request raised after its response", exc_info=True)
        finally:
            await messages.put(None)

    task = asyncio.create_task(run())
    try:
        while (message := await messages.get()) is not None:
            yield message
    finally:
        disconnected.set()
        if not task.done():  # give the app a moment to notice, then stop it
            asyncio.get_running_loop().call_later(10.0, task.cancel)


def app_path(scope: Scope) -> str:
    """The path below the application's route prefix (Serve keeps the prefix in `path` and
    names it in `root_path`), so the sidecar can be mounted at e.g. /guardrail."""
    path: str = scope["path"]
    root: str = scope.get("root_path") or ""
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root):] or "/"
    return path


# -- ingress ---------------------------------------------------------------------------------------------
class GuardrailIngress:
    """Forwards each HTTP request to a model replica and streams the answer back.

    Stateless, so it can run as many replicas as the HTTP load needs; every decision that
    needs state (which replica holds a session) is made by the router from the path alone.
    """

    def __init__(self, replicas: Any, max_body_bytes: int = 1 << 20) -> None:
        self.replicas = replicas.options(stream=True)
        self.max_body_bytes = max_body_bytes
        self.name = f"ingress:{serve.get_replica_context().replica_id.unique_id}"

    def __serve_build_asgi_app__(self) -> ASGIApp:
        return _ASGIEntry(self)

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "http":
            return
        root = scope.get("root_path") or ""
        if root and scope["path"] == root:  # /prefix -> /prefix/, so the page's relative links resolve
            query = scope.get("query_string", b"").decode("latin-1")
            location = root + "/" + (f"?{query}" if query else "")
            headers = {"location": location, REPLICA_HEADER: self.name}
            await send_json(send, 307, {"location": location}, headers)
            return
        body = await self._read_body(scope, receive)
        path = app_path(scope)
        found = session_owner(path)
        client = scope.get("client")
        request = {
            "method": scope["method"], "path": path, "query": scope.get("query_string", b""),
            "headers": [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])], "body": body,
            "client": list(client) if client else None, "owner": found[1] if found else None,
            "creates_session": scope["method"] == "POST" and path.rstrip("/") == "/v1/sessions",
        }
        started = False
        try:
            stream = self.replicas.handle.remote(request)
            async for part in stream:
                if not started:
                    started = True
                    await send({"type": "http.response.start", "status": part["status"],
                                "headers": part["headers"]})
                await send({"type": "http.response.body", "body": part["body"], "more_body": part["more"]})
        except RayActorError as exc:
            log.warning("replica lost while serving %s %s: %s", scope["method"], path, type(exc).__name__)
            if started:  # the stream was cut: end it; SSE readers see no done event
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            elif found is not None:
                await send_json(send, 410, error_body(gone_message(*found), code="session_gone"),
                                {REPLICA_HEADER: self.name})
            else:
                await send_json(send, 503, error_body("replica lost while serving the request; retry",
                                                      type="server_error", code="replica_lost"),
                                {REPLICA_HEADER: self.name, "Retry-After": "1"})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """Buffer the body, stopping just past the limit so the replica still answers 413."""
        parts: list[bytes] = []
        size = 0
        more = True
        while more and size <= self.max_body_bytes:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            parts.append(chunk)
            size += len(chunk)
            more = message.get("more_body", False)
        return b"".join(parts)


class _ASGIEntry:
    """The ingress as a plain ASGI 3 callable (servers detect the interface on `__call__`)."""

    def __init__(self, ingress: GuardrailIngress) -> None:
        self.ingress = ingress

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.ingress.asgi(scope, receive, send)


# -- building the application ------------------------------------------------------------------------
def build_app(settings: Settings | None = None, *, replicas: int = 1, min_replicas: int | None = None,
              max_replicas: int | None = None, target_ongoing_requests: float = 16.0,
              replica_cpus: float = 1.0, replica_gpus: float = 0.0, ingress_replicas: int = 1,
              ingress_cpus: float = 0.1, model_factory: str | ModelFactory | None = None,
              autoscaling: dict[str, Any] | None = None) -> Any:
    """The bound Serve application: ingress plus model replicas (fixed, or autoscaled between
    `min_replicas` and `max_replicas`; `autoscaling` passes further `AutoscalingConfig` fields
    such as `upscale_delay_s` and `downscale_delay_s`)."""
    settings = settings or Settings()
    values = settings.model_dump(exclude={"api_key", "upstream_api_key"})
    if settings.api_key:  # secrets travel as init args only when given explicitly
        values["api_key"] = settings.api_key
    if settings.upstream_api_key:
        values["upstream_api_key"] = settings.upstream_api_key
    scaling: dict[str, Any] = {"num_replicas": replicas}
    if min_replicas is not None or max_replicas is not None:
        low = min_replicas if min_replicas is not None else 1
        scaling = {"autoscaling_config": AutoscalingConfig(
            min_replicas=low, max_replicas=max(max_replicas or replicas, low),
            initial_replicas=max(low, min(replicas, max_replicas or replicas)),
            target_ongoing_requests=target_ongoing_requests, **(autoscaling or {}))}
    router = f"{SessionAffinityRouter.__module__}.{SessionAffinityRouter.__qualname__}"
    model = serve.deployment(
        name="GuardrailReplica", **scaling,
        ray_actor_options={"num_cpus": replica_cpus, "num_gpus": replica_gpus},
        max_ongoing_requests=max(settings.max_queue, settings.max_sessions),
        request_router_config={"request_router_class": router, "request_routing_stats_period_s": 2.0},
        health_check_period_s=5.0, graceful_shutdown_timeout_s=20.0,
    )(GuardrailReplica)
    ingress = serve.deployment(
        name="GuardrailIngress", num_replicas=ingress_replicas,
        ray_actor_options={"num_cpus": ingress_cpus}, max_ongoing_requests=4096,
    )(serve.ingress()(GuardrailIngress))
    return ingress.bind(model.bind(values, model_factory), settings.max_body_bytes)


def app_builder(args: dict[str, Any]) -> Any:
    """Entry point for `serve run` / `serve deploy` (`import_path: guardrail.server.ray_app:app_builder`).

    `args` holds the `Settings` fields plus the scaling keys of `build_app`.
    """
    scaling_keys = ("replicas", "min_replicas", "max_replicas", "target_ongoing_requests", "replica_cpus",
                    "replica_gpus", "ingress_replicas", "ingress_cpus", "model_factory", "autoscaling")
    scaling = {k: args[k] for k in scaling_keys if k in args}
    settings = Settings.from_env(**{k: v for k, v in args.items() if k not in scaling_keys})
    return build_app(settings, **scaling)
