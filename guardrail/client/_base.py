"""What the sync and async clients share: options, payloads, parsing, retries, fail policy.

The transport differs (httpx.Client vs httpx.AsyncClient); everything else lives here once,
so the two clients cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from pydantic import BaseModel, TypeAdapter

from guardrail.client.errors import GuardrailAuthError, GuardrailRequestError, SidecarUnavailableError
from guardrail.client.sse import SSEMessage
from guardrail.types import (
    ChatMessage,
    ChunkVerdict,
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    Verdict,
)

log = logging.getLogger("guardrail.client")
FailPolicy = Literal["fail_closed", "fail_open"]
Prompt = str | Sequence[ChatMessage | dict[str, Any]]
RETRY_STATUSES = frozenset({429, 503})
UNAVAILABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
_EVENTS: TypeAdapter[GenerationEvent] = TypeAdapter(GenerationEvent)


class FallbackVerdict(Verdict):
    """A verdict the client made up because the sidecar was unreachable (see `fail_policy`)."""

    fail_policy: FailPolicy
    reason: str


class FallbackChunkVerdict(ChunkVerdict):
    """A chunk verdict made up because the sidecar was unreachable (see `fail_policy`)."""

    fail_policy: FailPolicy
    reason: str


@dataclass
class ClientOptions:
    base_url: str
    config: GuardConfig | None = None
    api_key: str | None = None
    timeout: float = 30.0
    connect_timeout: float = 5.0
    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    fail_policy: FailPolicy = "fail_closed"
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fail_policy not in ("fail_closed", "fail_open"):
            raise ValueError("fail_policy must be 'fail_closed' or 'fail_open'")
        if self.retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = self.base_url.rstrip("/")
        if self.api_key is None:
            self.api_key = os.environ.get("GUARDRAIL_API_KEY") or None

    def httpx_kwargs(self) -> dict[str, Any]:
        headers = {"user-agent": "guardrail-client", **self.headers}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout, connect=self.connect_timeout),
            "limits": httpx.Limits(max_connections=100, max_keepalive_connections=20),
        }

    @property
    def threshold(self) -> float:
        return self.config.threshold if self.config is not None else 0.5


# -- payloads -------------------------------------------------------------------------------------
def prompt_json(prompt: Prompt) -> str | list[dict[str, Any]]:
    if isinstance(prompt, str):
        return prompt
    return [m.model_dump() if isinstance(m, BaseModel) else dict(m) for m in prompt]


def with_config(body: dict[str, Any], config: GuardConfig | None) -> dict[str, Any]:
    if config is not None:
        body["config"] = config.model_dump(mode="json")
    return body


def generate_body(prompt: Prompt, config: GuardConfig | None, *, max_new_tokens: int, prefill: str | None,
                  guard: bool, temperature: float, top_p: float, seed: int | None) -> dict[str, Any]:
    return with_config({
        "prompt": prompt_json(prompt), "max_new_tokens": max_new_tokens, "prefill": prefill,
        "guard": guard, "temperature": temperature, "top_p": top_p, "seed": seed,
    }, config)


# -- responses ------------------------------------------------------------------------------------
def raise_for_error(response: httpx.Response) -> None:
    """4xx: raise with the server's message. 5xx and 429 are handled by the retry loop."""
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
        message, code = str(error.get("message", response.text)), error.get("code")
    except (ValueError, AttributeError):
        message, code = response.text[:500], None
    if response.status_code in UNAVAILABLE_STATUSES:
        raise SidecarUnavailableError(f"sidecar answered {response.status_code}: {message}")
    cls = GuardrailAuthError if response.status_code == 401 else GuardrailRequestError
    raise cls(response.status_code, message, code)


def retry_delay(attempt: int, options: ClientOptions, response: httpx.Response | None) -> float:
    """Exponential backoff with jitter; a Retry-After header wins (capped)."""
    if response is not None:
        header = response.headers.get("retry-after")
        if header is not None:
            try:
                return min(float(header), options.max_backoff_s)
            except ValueError:
                pass
    base = min(options.backoff_s * (2**attempt), options.max_backoff_s)
    return base * (0.5 + random.random() / 2)


def should_retry(attempt: int, options: ClientOptions, *, response: httpx.Response | None = None,
                 error: Exception | None = None) -> bool:
    """Retry only what never reached the model: connect failures, 429 and 503."""
    if attempt >= options.retries:
        return False
    if error is not None:
        return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
    return response is not None and response.status_code in RETRY_STATUSES


def parse_event(message: SSEMessage) -> GenerationEvent:
    if message.event == "error":
        raise SidecarUnavailableError(f"generation failed on the sidecar: {message.data}")
    return _EVENTS.validate_json(message.data)


def collect_result(events: Iterable[GenerationEvent]) -> GenerationResult:
    """The same aggregation as `Guard.generate_text`."""
    last_score: float | None = None
    done: DoneEvent | None = None
    intercept: InterceptEvent | None = None
    for event in events:
        if isinstance(event, ScoreEvent):
            last_score = event.score
        elif isinstance(event, InterceptEvent):
            intercept = event
        elif isinstance(event, DoneEvent):
            done = event
    if done is None:
        raise SidecarUnavailableError("the generation stream ended without a done event")
    return GenerationResult(
        text=done.text, intercepted=done.intercepted, intercept_index=done.intercept_index,
        score=intercept.score if intercept else last_score, usage=done.usage, timings=done.timings,
    )


# -- fail policy ------------------------------------------------------------------------------------
def record_fallback(options: ClientOptions, reason: str, kind: str) -> None:
    """Leave a trace of every made-up verdict: a warning, and an event on the current span.

    Under fail_open a fallback lets text through unchecked, so it must never be silent;
    the span event lands on the app's (or `instrument()`'s) span when OpenTelemetry is used.
    """
    log.warning("guardrail sidecar unreachable (%s); applying %s", reason, options.fail_policy)
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - OpenTelemetry is optional
        return
    trace.get_current_span().add_event("guardrail.fallback", {
        "guardrail.fail_policy": options.fail_policy, "guardrail.fallback.kind": kind,
        "guardrail.fallback.reason": reason[:200],
    })


def fallback_verdict(options: ClientOptions, reason: str) -> FallbackVerdict:
    closed = options.fail_policy == "fail_closed"
    record_fallback(options, reason, "check")
    return FallbackVerdict(label="unsafe" if closed else "safe", score=1.0 if closed else 0.0,
                           threshold=options.threshold, fail_policy=options.fail_policy, reason=reason)


def fallback_chunk(options: ClientOptions, reason: str, chunk: str, tokens: int = 0) -> FallbackChunkVerdict:
    """fail_closed cuts the stream (nothing released); fail_open passes the chunk unchecked."""
    closed = options.fail_policy == "fail_closed"
    record_fallback(options, reason, "chunk")
    return FallbackChunkVerdict(
        label="unsafe" if closed else "safe", score=1.0 if closed else 0.0, threshold=options.threshold,
        released="" if closed else chunk, intercepted=closed, intercept_index=0 if closed else None,
        tokens=tokens, fail_policy=options.fail_policy, reason=reason,
    )


# -- session replay -------------------------------------------------------------------------------
REPLICA_HEADER = "x-guardrail-replica"


def is_gone(error: Exception) -> bool:
    """410: the session expired, was evicted, or its replica is gone; it can be rebuilt."""
    return isinstance(error, GuardrailRequestError) and error.status == 410


class StreamLedger:
    """What a remote session has sent and shown, so a lost session can be replayed once,
    in one chunk (O(text)), without showing any text twice.

    Releases are prefix-consistent: a replayed session releases the same text from the
    start, so the first `shown` characters it releases are skipped.
    """

    def __init__(self) -> None:
        self.sent = ""
        self.shown = 0
        self.skip = 0

    def replaying(self, text: str) -> str:
        """The text to feed a fresh session: everything sent so far, then this chunk."""
        self.skip = self.shown
        return self.sent + text

    def show(self, verdict: ChunkVerdict, text: str) -> ChunkVerdict:
        """Record an accepted chunk and trim what the app has already seen."""
        self.sent += text
        released = verdict.released
        if self.skip:
            cut = min(self.skip, len(released))
            self.skip -= cut
            released = released[cut:]
            verdict = verdict.model_copy(update={"released": released})
        self.shown += len(released)
        return verdict


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
