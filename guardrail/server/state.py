"""What the routes share: settings, the model behind its batcher, sessions, metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

import httpx
from fastapi import Depends, Request

from guardrail.model.engine import SafetyModel
from guardrail.server.batcher import Batcher
from guardrail.server.errors import APIError
from guardrail.server.floor import relaxations
from guardrail.server.metrics import Metrics
from guardrail.server.sessions import SessionStore, kv_bytes_per_token
from guardrail.server.settings import Settings
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import GuardConfig, merge_config

log = logging.getLogger("guardrail.server")


@dataclass
class ServerState:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    text: TokenizerThread = field(default_factory=TokenizerThread)
    model: SafetyModel | None = None
    batcher: Batcher | None = None
    sessions: SessionStore | None = None
    config: GuardConfig = field(default_factory=GuardConfig)
    upstream: httpx.AsyncClient | None = None
    load_error: str | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    session_id_prefix: str = "sess_"

    def attach(self, model: SafetyModel) -> None:
        """Put a loaded model behind a fresh batcher and session store."""
        s = self.settings
        self.model = model
        self.config = GuardConfig(threshold=float(model.head.config.threshold))
        self.batcher = Batcher(model, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                               max_queue=s.max_queue, metrics=self.metrics,
                               heap_trim_interval_s=s.heap_trim_interval_s)
        self.batcher.start()
        self.sessions = SessionStore(
            max_sessions=s.max_sessions, ttl_s=s.session_ttl_s,
            max_bytes=int(s.max_session_memory_mb * 2**20), bytes_per_token=kv_bytes_per_token(model),
            metrics=self.metrics, id_prefix=self.session_id_prefix,
        )
        self.ready.set()

    def require(self) -> tuple[Batcher, SessionStore]:
        """The batcher and store, or 503 while the model is still loading."""
        if self.batcher is None or self.sessions is None or not self.ready.is_set():
            message = f"model failed to load: {self.load_error}" if self.load_error else "model is loading"
            raise APIError(503, message, type="server_error", code="not_ready",
                           headers={"Retry-After": "1"})
        return self.batcher, self.sessions

    def config_for(self, override: GuardConfig | None, *, field: str = "config") -> GuardConfig:
        """The server's calibrated config with the fields the request named replaced.

        A request may make the guard stricter, never laxer (422 `config_not_allowed` naming the
        field and the server's value), unless the operator allows relaxation. A [CLS] window
        wider than the context is no window. `field` names the request's config in errors.
        """
        config = merge_config(self.config, override)
        limit = self.model.max_context if self.model is not None else None
        if override is not None and not self.settings.allow_request_relaxation:
            laxer = relaxations(self.config, config, max_context=limit)
            if laxer:
                raise APIError(422, "; ".join(r.message(field) for r in laxer), code="config_not_allowed",
                               param=f"{field}.{laxer[0].field}")
        if config.window is not None and limit is not None and config.window > limit:
            config = config.model_copy(update={"window": limit})  # same visibility, no overflow
        return config

    def text_for_log(self, text: object) -> str:
        """Prompt and response text appears in logs only when --log-text is given."""
        if not self.settings.log_text:
            return f"<{len(str(text))} chars>"
        return repr(text)[:2000]


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.guardrail
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
