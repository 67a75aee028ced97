"""What the sync and async clients share: options, payloads, parsing, retries, fail policy, and
every request sequence written once as a plan.

A plan is a generator that yields `Call`s and receives the `httpx.Response` of each (or has the
request's error thrown into it). The sync client drives plans with `httpx.Client`, the async
client with `httpx.AsyncClient`; the logic between requests (fallbacks, session replay, the
ledger of shown text) exists once, so the two clients cannot drift apart.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import random
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel

from guardrail.client.errors import (
    GuardrailAuthError,
    GuardrailRequestError,
    SessionClosedRemoteError,
    SidecarUnavailableError,
)
from guardrail.events import collect_result as _collect
from guardrail.moderation import ModerationInput, ModerationResponse, moderation_response, moderation_texts
from guardrail.types import (
    ChunkVerdict,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    PromptInput,
    Verdict,
    merge_config,
)

_inject_trace_context: Callable[[dict[str, str]], None] | None
try:  # optional: W3C trace context crosses the hop when OpenTelemetry is installed
    from opentelemetry.propagate import inject as _inject_trace_context
except ImportError:  # pragma: no cover - OpenTelemetry is optional
    _inject_trace_context = None

log = logging.getLogger("guardrail.client")
FailPolicy = Literal["fail_closed", "fail_open"]
Prompt = PromptInput
"""Kept for imports of the old name; `PromptInput` is the one prompt alias."""
RETRY_STATUSES = frozenset({429, 503})
UNAVAILABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_THRESHOLD = GuardConfig().threshold
"""Used for a fallback only before the sidecar has told its own threshold."""

T = TypeVar("T")


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
    server_threshold: float | None = None
    """The sidecar's own (calibrated) threshold, learnt from its first answer to a request without one."""
    server_config: GuardConfig | None = None
    """The sidecar's whole default config, when it said it (a session opened without a config)."""
    server_model: str | None = None
    """The served model's name, once `/readyz` said it."""

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

    def threshold_for(self, config: GuardConfig | None) -> float:
        """The threshold a request with this config is judged by: the one the caller set, else the
        sidecar's calibrated one (once known), else the protocol default."""
        for cfg in (config, self.config):
            if cfg is not None and "threshold" in cfg.model_fields_set:
                return cfg.threshold
        return self.server_threshold if self.server_threshold is not None else DEFAULT_THRESHOLD

    @property
    def threshold(self) -> float:
        return self.threshold_for(None)

    def config_json(self, override: GuardConfig | None = None) -> dict[str, Any] | None:
        """Only the fields the caller set (client-wide, then per call), so the sidecar's calibrated
        defaults apply to everything else; None when nothing was set."""
        fields: dict[str, Any] = {}
        for cfg in (self.config, override):
            if cfg is not None:
                fields.update(cfg.model_dump(mode="json", exclude_unset=True))
        return fields or None

    def learn(self, verdict: Verdict | ChunkVerdict, sent: dict[str, Any] | None) -> None:
        """Remember the sidecar's threshold from an answer judged by its own default."""
        fallback = isinstance(verdict, FallbackVerdict | FallbackChunkVerdict)
        if not fallback and "threshold" not in (sent or {}):
            self.server_threshold = verdict.threshold

    def learn_config(self, config: dict[str, Any] | None, sent: dict[str, Any] | None) -> None:
        """Remember the sidecar's default config from a session opened without one."""
        if config is not None and not sent:
            self.server_config = GuardConfig.model_validate(config)
            self.server_threshold = self.server_config.threshold

    def effective_config(self) -> GuardConfig:
        """The sidecar's defaults (as far as known) with the fields the caller set."""
        base = self.server_config or GuardConfig(threshold=self.threshold_for(None))
        return merge_config(base, self.config)


# -- trace context --------------------------------------------------------------------------------
def trace_headers() -> dict[str, str]:
    """W3C `traceparent` / `tracestate` of the current span (empty without OpenTelemetry)."""
    carrier: dict[str, str] = {}
    if _inject_trace_context is not None:
        _inject_trace_context(carrier)
    return carrier


# -- payloads -------------------------------------------------------------------------------------
def prompt_json(prompt: PromptInput) -> str | list[dict[str, Any]]:
    if isinstance(prompt, str):
        return prompt
    return [m.model_dump() if isinstance(m, BaseModel) else dict(m) for m in prompt]


def with_config(body: dict[str, Any], config: dict[str, Any] | None) -> dict[str, Any]:
    if config is not None:
        body["config"] = config
    return body


def check_body(prompt: PromptInput, response: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": prompt_json(prompt)}
    if response is not None:
        body["response"] = response
    return body


def generate_body(prompt: PromptInput, config: dict[str, Any] | None, *, max_new_tokens: int,
                  prefill: str | None, guard: bool, temperature: float, top_p: float,
                  seed: int | None) -> dict[str, Any]:
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
    cls: type[GuardrailRequestError] = GuardrailRequestError
    if response.status_code == 401:
        cls = GuardrailAuthError
    elif response.status_code == 409:
        cls = SessionClosedRemoteError
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


class Attempts:
    """The retry decision of one request, shared by both transports: each answer or transport
    error gives either a delay before the next attempt, or the end (a response or an error)."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.count = 0

    def after_error(self, error: httpx.TransportError) -> float:
        """Delay before retrying, or `SidecarUnavailableError` when this error is final."""
        if not should_retry(self.count, self.options, error=error):
            raise SidecarUnavailableError(describe(error)) from error
        return self._next(None)

    def after_response(self, response: httpx.Response) -> float | None:
        """Delay before retrying, or None when this response is the answer."""
        if should_retry(self.count, self.options, response=response):
            return self._next(response)
        return None

    def _next(self, response: httpx.Response | None) -> float:
        delay = retry_delay(self.count, self.options, response)
        self.count += 1
        return delay


def collect_result(events: Iterable[GenerationEvent]) -> GenerationResult:
    """The same aggregation as the embedded guard's `generate_text`."""
    return _collect(events, missing=SidecarUnavailableError)


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


def fallback_verdict(options: ClientOptions, reason: str, threshold: float | None = None) -> FallbackVerdict:
    closed = options.fail_policy == "fail_closed"
    record_fallback(options, reason, "check")
    return FallbackVerdict(label="unsafe" if closed else "safe", score=1.0 if closed else 0.0,
                           threshold=options.threshold if threshold is None else threshold,
                           fail_policy=options.fail_policy, reason=reason)


def fallback_chunk(options: ClientOptions, reason: str, chunk: str, tokens: int = 0,
                   threshold: float | None = None) -> FallbackChunkVerdict:
    """fail_closed cuts the stream (nothing released); fail_open passes the chunk unchecked."""
    closed = options.fail_policy == "fail_closed"
    record_fallback(options, reason, "chunk")
    return FallbackChunkVerdict(
        label="unsafe" if closed else "safe", score=1.0 if closed else 0.0,
        threshold=options.threshold if threshold is None else threshold,
        released="" if closed else chunk, intercepted=closed, intercept_index=0 if closed else None,
        tokens=tokens, fail_policy=options.fail_policy, reason=reason,
    )


# -- plans ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One request a plan needs answered."""

    method: str
    path: str
    body: dict[str, Any] | None = None


Plan = Generator[Call, httpx.Response, T]
"""Yields the requests to make, receives each answer; its return value is the method's result."""


class ClientCore:
    """The state and plans both clients share: options, fallback count, checks."""

    options: ClientOptions
    fallbacks: int

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.fallbacks = 0

    @property
    def config(self) -> GuardConfig | None:
        """The config the caller gave this client (None: the sidecar's calibrated defaults)."""
        return self.options.config

    @property
    def model_name(self) -> str | None:
        """The served model's name, once the sidecar said it (see `effective_config`)."""
        return self.options.server_model

    @property
    def threshold(self) -> float:
        """The threshold checks are judged by (the sidecar's, once known, unless one was set)."""
        return self.options.threshold

    def _defaults_plan(self) -> Plan[GuardConfig]:
        """The sidecar's calibrated defaults: from `/readyz` when it names them, else the threshold
        of one check of a neutral prompt (asked once, then remembered)."""
        options = self.options
        if options.server_model is None or options.server_threshold is None:
            try:
                ready = (yield Call("GET", "/readyz")).json()
                options.learn_config(ready.get("config"), None)
                if isinstance(ready.get("model"), str):
                    options.server_model = ready["model"]
            except (SidecarUnavailableError, GuardrailRequestError, ValueError):
                pass
        if options.server_threshold is None:
            try:
                answer = yield Call("POST", "/v1/check", {"prompt": "Hello."})
                options.learn(Verdict.model_validate(answer.json()), None)
            except (SidecarUnavailableError, GuardrailRequestError):
                pass
        return options.effective_config()

    def _fallback(self, reason: str, threshold: float | None = None) -> FallbackVerdict:
        self.fallbacks += 1
        return fallback_verdict(self.options, reason, threshold)

    def _check_plan(self, prompt: PromptInput, response: str | None) -> Plan[Verdict]:
        sent = self.options.config_json()
        try:
            answer = yield Call("POST", "/v1/check", with_config(check_body(prompt, response), sent))
        except SidecarUnavailableError as exc:
            return self._fallback(str(exc))
        verdict = Verdict.model_validate(answer.json())
        self.options.learn(verdict, sent)
        return verdict

    def _batch_plan(self, items: Sequence[tuple[PromptInput, str | None]]) -> Plan[list[Verdict]]:
        """`POST /v1/check` with a `batch`: one verdict per item, in order."""
        if not items:
            return []
        sent = self.options.config_json()
        body = with_config({"batch": [check_body(p, r) for p, r in items]}, sent)
        try:
            answer = yield Call("POST", "/v1/check", body)
        except SidecarUnavailableError as exc:
            return [self._fallback(str(exc)) for _ in items]
        results = answer.json().get("results")
        if not isinstance(results, list) or len(results) != len(items):
            raise SidecarUnavailableError("the sidecar's batch answer does not match the request")
        verdicts = [Verdict.model_validate(v) for v in results]
        for verdict in verdicts[:1]:
            self.options.learn(verdict, sent)
        return verdicts

    def _moderations_plan(self, input: ModerationInput,
                          config: GuardConfig | None) -> Plan[ModerationResponse]:
        """`POST /v1/moderations`. The input is read by the same rule as everywhere (bad input
        raises `InputError` before any request); the sidecar answers one result per text.
        Unreachable, each result follows `fail_policy` through the same verdict -> result rule."""
        texts = moderation_texts(input)
        body = with_config({"input": input if isinstance(input, str) else texts},
                           self.options.config_json(config))
        try:
            answer = yield Call("POST", "/v1/moderations", body)
        except SidecarUnavailableError as exc:
            threshold = self.options.threshold_for(config)
            return moderation_response([self._fallback(str(exc), threshold) for _ in texts],
                                       self.options.server_model or "unavailable")
        moderated = ModerationResponse.model_validate(answer.json())
        if len(moderated.results) != len(texts):
            raise SidecarUnavailableError("the sidecar's moderation answer does not match the request")
        return moderated


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


def merge_released(first: ChunkVerdict | None, verdict: ChunkVerdict) -> ChunkVerdict:
    """A close that fed a tail first: what the tail's chunk released is not lost."""
    if first is not None and first.released:
        return verdict.model_copy(update={"released": first.released + verdict.released})
    return verdict


class SessionCore:
    """A moderation session held by the sidecar (its KV cache stays there), as plans.

    `RemoteSession` and `AsyncRemoteSession` only drive these plans.
    """

    def __init__(self, client: ClientCore, prompt: PromptInput, config: GuardConfig | None) -> None:
        self.client: ClientCore = client
        self.id: str | None = None
        self.degraded: str | None = None  # why the sidecar could not be used, if it could not
        self.tokens = 0
        self.replays = 0  # times the session was rebuilt after a 410 (replica lost, expired)
        self.replica: str | None = None  # the replica that served the last answer, when named
        self.prompt_verdict: Verdict | None = None
        self.config = config
        self._prompt = prompt
        self._sent_config = client.options.config_json(config)
        self._ledger = StreamLedger()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # sent to the sidecar, not yet released by it

    @property
    def threshold(self) -> float:
        return self.client.options.threshold_for(self.config)

    def _create_plan(self) -> Plan[Verdict]:
        body = with_config({"prompt": prompt_json(self._prompt)}, self._sent_config)
        answer = yield Call("POST", "/v1/sessions", body)
        created = answer.json()
        self.id = created["id"]
        self.replica = answer.headers.get(REPLICA_HEADER)
        verdict = Verdict.model_validate(created["prompt"])
        self.client.options.learn(verdict, self._sent_config)
        self.client.options.learn_config(created.get("config"), self._sent_config)
        return verdict

    def _start_plan(self) -> Plan[Verdict | None]:
        try:
            self.prompt_verdict = yield from self._create_plan()
        except SidecarUnavailableError as exc:
            self.degraded = str(exc)
            self.prompt_verdict = self.client._fallback(self.degraded, self.threshold)
        return self.prompt_verdict

    def _post_plan(self, path: str, body: dict[str, Any] | None) -> Plan[ChunkVerdict]:
        answer = yield Call("POST", path, body)
        self.replica = answer.headers.get(REPLICA_HEADER, self.replica)
        return ChunkVerdict.model_validate(answer.json())

    def _feed_plan(self, chunk: str | bytes) -> Plan[ChunkVerdict]:
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        return (yield from self._send_plan(f"/v1/sessions/{self.id}/chunks", {"text": text}, text))

    def _close_plan(self) -> Plan[ChunkVerdict]:
        tail = self._decoder.decode(b"", final=True)
        first = (yield from self._feed_plan(tail)) if tail else None
        if first is not None and first.intercepted:
            return first
        verdict = yield from self._send_plan(f"/v1/sessions/{self.id}/close", None, "")
        return merge_released(first, verdict)

    def _delete_plan(self) -> Plan[None]:
        if self.id is None:
            return
        with contextlib.suppress(GuardrailRequestError, SidecarUnavailableError):
            yield Call("DELETE", f"/v1/sessions/{self.id}")

    def _send_plan(self, path: str, body: dict[str, Any] | None, text: str) -> Plan[ChunkVerdict]:
        self._pending += text
        if self.degraded is None:
            try:
                try:
                    verdict = yield from self._post_plan(path, body)
                except GuardrailRequestError as exc:
                    if not is_gone(exc):
                        raise
                    verdict = yield from self._replay_plan(text, closing=body is None,
                                                           reason=exc.server_message)
                verdict = self._ledger.show(verdict, text)
                self.tokens = verdict.tokens
                self._pending = self._pending[len(verdict.released):]
                return verdict
            except SidecarUnavailableError as exc:
                self.degraded = str(exc)
        self.client.fallbacks += 1
        # fail_open releases everything the sidecar still held back, so no text is lost
        pending, self._pending = self._pending, ""
        return fallback_chunk(self.client.options, self.degraded, pending, self.tokens, self.threshold)

    def _replay_plan(self, text: str, *, closing: bool, reason: str) -> Plan[ChunkVerdict]:
        """Rebuild a lost session elsewhere: one new session, the whole text so far as one
        chunk, then the close if that was the request. A failed replay counts as unavailable."""
        self.replays += 1
        log.warning("guardrail session %s lost (%s); replaying %d characters", self.id, reason,
                    len(self._ledger.sent) + len(text))
        try:
            yield from self._create_plan()
            replay = self._ledger.replaying(text)
            first: ChunkVerdict | None = None
            if replay or not closing:
                first = yield from self._post_plan(f"/v1/sessions/{self.id}/chunks", {"text": replay})
                if not closing or first.intercepted:
                    return first
            verdict = yield from self._post_plan(f"/v1/sessions/{self.id}/close", None)
        except GuardrailRequestError as exc:
            raise SidecarUnavailableError(f"session lost and its replay failed: {exc}") from exc
        return merge_released(first, verdict)


def describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
