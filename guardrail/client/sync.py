"""`GuardrailClient`: the embedded `Guard`'s methods, answered by a sidecar over HTTP."""

from __future__ import annotations

import codecs
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import httpx

from guardrail.client._base import (
    REPLICA_HEADER,
    ClientOptions,
    FailPolicy,
    Prompt,
    StreamLedger,
    collect_result,
    describe,
    fallback_chunk,
    fallback_verdict,
    generate_body,
    is_gone,
    log,
    parse_event,
    prompt_json,
    raise_for_error,
    retry_delay,
    should_retry,
    with_config,
)
from guardrail.client.errors import GuardrailRequestError, SidecarUnavailableError
from guardrail.client.sse import SSEParser
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, GuardConfig, Verdict


class GuardrailClient:
    """Checks, guarded generation and stream moderation against `guardrail serve`.

    Connection pooling and timeouts come from httpx; connect errors, 429 and 503 are
    retried with backoff. When the sidecar stays unreachable, checks and chunks follow
    `fail_policy`: "fail_closed" (default) answers unsafe and releases nothing,
    "fail_open" answers safe; either way the verdict is a `FallbackVerdict` /
    `FallbackChunkVerdict` naming the policy, and `fallbacks` counts them. Generation
    cannot fall back and raises `SidecarUnavailableError`.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, config: GuardConfig | None = None,
                 api_key: str | None = None, timeout: float = 30.0, connect_timeout: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 fail_policy: FailPolicy = "fail_closed", headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.options = ClientOptions(base_url, config, api_key, timeout, connect_timeout, retries, backoff_s,
                                     max_backoff_s, fail_policy, dict(headers or {}))
        self.config = config
        self.fallbacks = 0
        self._http = httpx.Client(transport=transport, **self.options.httpx_kwargs())

    # -- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TransportError as exc:
                if should_retry(attempt, self.options, error=exc):
                    time.sleep(retry_delay(attempt, self.options, None))
                    attempt += 1
                    continue
                raise SidecarUnavailableError(describe(exc)) from exc
            if should_retry(attempt, self.options, response=response):
                time.sleep(retry_delay(attempt, self.options, response))
                attempt += 1
                continue
            raise_for_error(response)
            return response

    # -- checks -------------------------------------------------------------------------------
    def check_prompt(self, prompt: Prompt) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        return self._check({"prompt": prompt_json(prompt)})

    def check_response(self, prompt: Prompt, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        return self._check({"prompt": prompt_json(prompt), "response": response})

    def _check(self, body: dict[str, Any]) -> Verdict:
        try:
            response = self._request("POST", "/v1/check", with_config(body, self.config))
            return Verdict.model_validate(response.json())
        except SidecarUnavailableError as exc:
            self.fallbacks += 1
            return fallback_verdict(self.options, str(exc))

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompt: Prompt, *, max_new_tokens: int = 128, prefill: str | None = None,
                 guard: bool = True, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 config: GuardConfig | None = None) -> Iterator[GenerationEvent]:
        """Stream guarded generation events (token, score, intercept, done) from the sidecar."""
        body = generate_body(prompt, config or self.config, max_new_tokens=max_new_tokens, prefill=prefill,
                             guard=guard, temperature=temperature, top_p=top_p, seed=seed)
        attempt = 0
        while True:
            try:
                with self._http.stream("POST", "/v1/generate", json=body) as response:
                    if should_retry(attempt, self.options, response=response):
                        delay = retry_delay(attempt, self.options, response)
                    else:
                        if response.status_code >= 400:
                            response.read()
                            raise_for_error(response)
                        parser = SSEParser()
                        for line in response.iter_lines():
                            message = parser.feed(line)
                            if message is not None:
                                yield parse_event(message)
                        return
            except httpx.TransportError as exc:
                if not should_retry(attempt, self.options, error=exc):
                    raise SidecarUnavailableError(describe(exc)) from exc
                delay = retry_delay(attempt, self.options, None)
            time.sleep(delay)
            attempt += 1

    def generate_text(self, prompt: Prompt, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end: the final text and whether it was cut."""
        return collect_result(self.generate(prompt, **kwargs))

    # -- stream moderation ----------------------------------------------------------------------
    def session(self, prompt: Prompt, *, config: GuardConfig | None = None) -> RemoteSession:
        """Moderate another model's stream on the sidecar: `feed(chunk)` per chunk, then `close()`."""
        return RemoteSession(self, prompt, config or self.config)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GuardrailClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSession:
    """A moderation session held by the sidecar (its KV cache stays there)."""

    def __init__(self, client: GuardrailClient, prompt: Prompt, config: GuardConfig | None) -> None:
        self.client = client
        self.id: str | None = None
        self.degraded: str | None = None  # why the sidecar could not be used, if it could not
        self.tokens = 0
        self.replays = 0  # times the session was rebuilt after a 410 (replica lost, expired)
        self.replica: str | None = None  # the replica that served the last answer, when named
        self._prompt = prompt
        self._config = config
        self._ledger = StreamLedger()
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # sent to the sidecar, not yet released by it
        try:
            self.prompt_verdict: Verdict = self._create()
        except SidecarUnavailableError as exc:
            self.degraded = str(exc)
            client.fallbacks += 1
            self.prompt_verdict = fallback_verdict(client.options, self.degraded)

    def _create(self) -> Verdict:
        response = self.client._request("POST", "/v1/sessions",
                                        with_config({"prompt": prompt_json(self._prompt)}, self._config))
        created = response.json()
        self.id = created["id"]
        self.replica = response.headers.get(REPLICA_HEADER)
        return Verdict.model_validate(created["prompt"])

    def _post(self, path: str, body: dict[str, Any] | None) -> ChunkVerdict:
        response = self.client._request("POST", path, body)
        self.replica = response.headers.get(REPLICA_HEADER, self.replica)
        return ChunkVerdict.model_validate(response.json())

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk; `released` is the text now safe to show."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        return self._send(f"/v1/sessions/{self.id}/chunks", {"text": text}, text)

    def close(self) -> ChunkVerdict:
        """End of the stream: the tail is checked and released if safe."""
        tail = self._decoder.decode(b"", final=True)
        first = self.feed(tail) if tail else None
        if first is not None and first.intercepted:
            return first
        verdict = self._send(f"/v1/sessions/{self.id}/close", None, "")
        if first is not None and first.released:  # what the tail's chunk released is not lost
            verdict = verdict.model_copy(update={"released": first.released + verdict.released})
        return verdict

    def delete(self) -> None:
        """Free the session on the sidecar now rather than at its idle TTL."""
        if self.id is None:
            return
        with contextlib.suppress(GuardrailRequestError, SidecarUnavailableError):
            self.client._request("DELETE", f"/v1/sessions/{self.id}")

    def _send(self, path: str, body: dict[str, Any] | None, text: str) -> ChunkVerdict:
        self._pending += text
        if self.degraded is None:
            try:
                try:
                    verdict = self._post(path, body)
                except GuardrailRequestError as exc:
                    if not is_gone(exc):
                        raise
                    verdict = self._replay(text, closing=body is None, reason=exc.server_message)
                verdict = self._ledger.show(verdict, text)
                self.tokens = verdict.tokens
                self._pending = self._pending[len(verdict.released):]
                return verdict
            except SidecarUnavailableError as exc:
                self.degraded = str(exc)
        self.client.fallbacks += 1
        # fail_open releases everything the sidecar still held back, so no text is lost
        pending, self._pending = self._pending, ""
        return fallback_chunk(self.client.options, self.degraded, pending, self.tokens)

    def _replay(self, text: str, *, closing: bool, reason: str) -> ChunkVerdict:
        """Rebuild a lost session elsewhere: one new session, the whole text so far as one
        chunk, then the close if that was the request. A failed replay counts as unavailable."""
        self.replays += 1
        log.warning("guardrail session %s lost (%s); replaying %d characters", self.id, reason,
                    len(self._ledger.sent) + len(text))
        try:
            self._create()
            replay = self._ledger.replaying(text)
            first: ChunkVerdict | None = None
            if replay or not closing:
                first = self._post(f"/v1/sessions/{self.id}/chunks", {"text": replay})
                if not closing or first.intercepted:
                    return first
            verdict = self._post(f"/v1/sessions/{self.id}/close", None)
        except GuardrailRequestError as exc:
            raise SidecarUnavailableError(f"session lost and its replay failed: {exc}") from exc
        if first is not None and first.released:
            verdict = verdict.model_copy(update={"released": first.released + verdict.released})
        return verdict

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()
