"""What the routes share: settings, the model behind its batcher, sessions, metrics."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

import httpx
from fastapi import Depends, Request

from guardrail.model.check import validate_categories
from guardrail.model.engine import SafetyModel
from guardrail.model.prompts import PromptInput, encode_prompt, encode_text
from guardrail.server.batcher import Batcher
from guardrail.server.errors import APIError
from guardrail.server.floor import relaxations
from guardrail.server.metrics import Metrics
from guardrail.server.moderation import SteppedSession
from guardrail.server.sessions import SessionStore, kv_bytes_per_token
from guardrail.server.settings import Settings
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChatMessage, GuardConfig, merge_config

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

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
    longest_token_chars: int = 0  # no token covers more characters than this (0: unknown)
    tracer: Tracer | None = None  # set when tracing is on

    def attach(self, model: SafetyModel) -> None:
        """Put a loaded model behind a fresh batcher and session store."""
        s = self.settings
        try:  # the operator's rules must name the head's categories
            validate_categories(s.category_rules, model.head.category_names, field="category_rules")
        except ValueError as exc:
            self.load_error = str(exc)
            raise
        self.model = model
        threshold = s.threshold if s.threshold is not None else float(model.head.config.threshold)
        self.config = GuardConfig(threshold=threshold,
                                  categories=dict(s.category_rules))
        self.longest_token_chars = longest_token_chars(model)
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
        wider than the context is no window. A category the head does not score is 422
        `invalid_input` naming it (the engine's own check, run before any work). `field` names
        the request's config in errors.
        """
        config = merge_config(self.config, override)
        limit = self.model.max_context if self.model is not None else None
        head = self.model.head if self.model is not None else None
        if head is not None:
            validate_categories(config.categories, head.category_names, field=f"{field}.categories")
        if override is not None and not self.settings.allow_request_relaxation:
            laxer = relaxations(self.config, config, max_context=limit,
                                category_thresholds=head.category_thresholds if head is not None else None)
            if laxer:
                raise APIError(422, "; ".join(r.message(field) for r in laxer), code="config_not_allowed",
                               param=f"{field}.{laxer[0].field}")
        if config.window is not None and limit is not None and config.window > limit:
            config = config.model_copy(update={"window": limit})  # same visibility, no overflow
        return config

    async def prompt_ids(self, prompt: PromptInput, *, field: str = "prompt") -> list[int]:
        """The prompt's token ids, or 413 `prompt_too_long` naming the limit.

        A prompt over the budget is refused rather than cut: a cut prompt (its start and end
        kept, as training fits long texts) would let text hidden in its middle go unchecked.
        One that certainly exceeds it (more characters than the budget's tokens can cover) is
        refused before any tokenizer work, so a 1 MB prompt costs nothing.
        """
        self.precheck_prompt(prompt, field=field)
        return await self.text.run(lambda: self.encode_prompt_within_budget(prompt, field=field))

    @property
    def prompt_token_limit(self) -> int:
        """`max_prompt_tokens`, capped at half the model's context: the room a prompt has when a
        response follows it, so no accepted prompt is ever cut to fit."""
        limit = self.settings.max_prompt_tokens
        return min(limit, self.model.max_context // 2) if self.model is not None else limit

    def precheck_prompt(self, prompt: PromptInput, *, field: str = "prompt") -> None:
        """413 at once for a prompt with more characters than the budget's tokens can spell."""
        limit = self.prompt_token_limit
        chars = prompt_chars(prompt)
        if self.longest_token_chars and chars > limit * self.longest_token_chars:
            raise _prompt_too_long(field, f"{chars} characters", limit)

    def encode_prompt_within_budget(self, prompt: PromptInput, *, field: str = "prompt") -> list[int]:
        """Tokenise (call on the tokenizer thread); 413 when the ids exceed the budget."""
        assert self.model is not None
        ids = encode_prompt(self.model.tokenizer, prompt)
        if len(ids) > self.prompt_token_limit:
            raise _prompt_too_long(field, f"{len(ids)} tokens", self.prompt_token_limit)
        return ids

    async def within_session_limit(self, session: SteppedSession, text: str, *, closing: bool) -> None:
        """413 `session_too_long` when the session's response, with this chunk (or at close, its
        unfinished tail), would pass `max_session_tokens`: checked before any state changes.

        Every token is at least one byte, so a session far from the limit is not tokenised twice;
        near it, the pending text and the chunk are counted exactly (the same tokens the
        incremental tokenizer will commit, since pending text starts at a word boundary).
        """
        limit = self.settings.max_session_tokens
        held = len(session.response)
        what = "closing it" if closing else "this chunk"
        if held >= limit and not closing:
            raise _session_too_long(f"session exceeded {limit} response tokens", limit)
        tail = session.state.tokens.pending + text
        if held + len(tail.encode("utf-8", "surrogatepass")) <= limit:
            return
        if self.longest_token_chars and held + len(tail) / self.longest_token_chars > limit:
            count = limit + 1  # certainly over: no need to tokenise
        else:
            assert self.model is not None
            tokenizer = self.model.tokenizer
            count = await self.text.run(lambda: len(encode_text(tokenizer, tail)))
        if held + count > limit:
            raise _session_too_long(f"{what} would take the session past its {limit} response tokens "
                                    f"(max_session_tokens)", limit)

    def text_for_log(self, text: object) -> str:
        """Prompt and response text appears in logs only when --log-text is given."""
        if not self.settings.log_text:
            return f"<{len(str(text))} chars>"
        return repr(text)[:2000]


def prompt_chars(prompt: PromptInput) -> int:
    """Characters of text in a prompt (a string or chat messages)."""
    if isinstance(prompt, str):
        return len(prompt)
    total = 0
    for message in prompt:
        content = message.content if isinstance(message, ChatMessage) else message.get("content")
        total += len(content) if isinstance(content, str) else 0
    return total


def longest_token_chars(model: SafetyModel) -> int:
    """The most characters one vocabulary entry spells (byte-level entries spell one per byte)."""
    try:
        vocab = model.tokenizer.get_vocab()
    except Exception:  # a tokenizer without a vocabulary listing: no character shortcut
        return 0
    return max((len(token) for token in vocab), default=0)


def _prompt_too_long(field: str, size: str, limit: int) -> APIError:
    return APIError(413, f"{field} is {size}, over the limit of {limit} tokens (max_prompt_tokens, at "
                    "most half the model's context); shorten it", code="prompt_too_long", param=field)


def _session_too_long(message: str, limit: int) -> APIError:
    return APIError(413, message, code="session_too_long", param="max_session_tokens")


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.guardrail
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
