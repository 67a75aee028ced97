"""`GuardrailClient`: the embedded `Guard`'s methods, answered by a sidecar over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import httpx

from guardrail.client._base import (
    Attempts,
    Call,
    ClientCore,
    ClientOptions,
    FailPolicy,
    Plan,
    SessionCore,
    collect_result,
    generate_body,
    raise_for_error,
    trace_headers,
)
from guardrail.client.errors import GuardrailError
from guardrail.client.sse import iter_events
from guardrail.moderation import ModerationInput, ModerationResponse
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, GuardConfig, PromptInput, Verdict

T = TypeVar("T")


class GuardrailClient(ClientCore):
    """Checks, guarded generation and stream moderation against `guardrail serve`.

    Connection pooling and timeouts come from httpx; connect errors, 429 and 503 are
    retried with backoff. When the sidecar stays unreachable, checks and chunks follow
    `fail_policy`: "fail_closed" (default) answers unsafe and releases nothing,
    "fail_open" answers safe; either way the verdict is a `FallbackVerdict` /
    `FallbackChunkVerdict` naming the policy, and `fallbacks` counts them. Generation
    cannot fall back and raises `SidecarUnavailableError`.

    Without `config`, the sidecar's calibrated defaults apply; a config sends only the
    fields it set. Every request carries the caller's W3C trace context.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, config: GuardConfig | None = None,
                 api_key: str | None = None, timeout: float = 30.0, connect_timeout: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 fail_policy: FailPolicy = "fail_closed", headers: dict[str, str] | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(ClientOptions(base_url, config, api_key, timeout, connect_timeout, retries,
                                       backoff_s, max_backoff_s, fail_policy, dict(headers or {})))
        self._http = httpx.Client(transport=transport, **self.options.httpx_kwargs())

    # -- plumbing -----------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        request = self._http.build_request(method, path, json=body, headers=trace_headers())
        attempts = Attempts(self.options)
        while True:
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
            else:
                if (delay_or_none := attempts.after_response(response)) is None:
                    raise_for_error(response)
                    return response
                delay = delay_or_none
            time.sleep(delay)

    def _run(self, plan: Plan[T]) -> T:
        """Drive a plan: make each request it yields and send it the answer (or the error)."""
        try:
            call = next(plan)
            while True:
                try:
                    response = self._request(call.method, call.path, call.body)
                except GuardrailError as exc:
                    call = plan.throw(exc)
                else:
                    call = plan.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def effective_config(self) -> GuardConfig:
        """The config the sidecar judges this client's requests by: its calibrated defaults with
        the fields this client set (asks the sidecar once when not yet known)."""
        return self._run(self._defaults_plan())

    # -- checks -------------------------------------------------------------------------------
    def check_prompt(self, prompt: PromptInput) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        return self._run(self._check_plan(prompt, None))

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        return self._run(self._check_plan(prompt, response))

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        """One verdict per request, in one round trip (the sidecar batches them)."""
        return self._run(self._batch_plan([(p, None) for p in prompts]))

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        """One verdict per (request, response) pair, in one round trip."""
        return self._run(self._batch_plan(list(pairs)))

    def moderations(self, input: ModerationInput, *, config: GuardConfig | None = None) -> ModerationResponse:
        """OpenAI's moderation call, answered by the sidecar's `/v1/moderations` in one batched pass."""
        return self._run(self._moderations_plan(input, config))

    # -- generation ---------------------------------------------------------------------------
    def generate(self, prompt: PromptInput, *, max_new_tokens: int = 128, prefill: str | None = None,
                 guard: bool = True, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 config: GuardConfig | None = None) -> Iterator[GenerationEvent]:
        """Stream guarded generation events (token, score, intercept, done) from the sidecar."""
        body = generate_body(prompt, self.options.config_json(config), max_new_tokens=max_new_tokens,
                             prefill=prefill, guard=guard, temperature=temperature, top_p=top_p, seed=seed)
        request = self._http.build_request("POST", "/v1/generate", json=body, headers=trace_headers())
        attempts = Attempts(self.options)
        while True:
            try:
                response = self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                time.sleep(attempts.after_error(exc))
                continue
            try:
                delay = attempts.after_response(response)
                if delay is None:
                    if response.status_code >= 400:
                        response.read()
                        raise_for_error(response)
                    yield from iter_events(response)
                    return
            finally:
                response.close()
            time.sleep(delay)

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end: the final text and whether it was cut."""
        return collect_result(self.generate(prompt, **kwargs))

    # -- stream moderation ----------------------------------------------------------------------
    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> RemoteSession:
        """Moderate another model's stream on the sidecar: `feed(chunk)` per chunk, then `close()`."""
        return RemoteSession(self, prompt, config)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> GuardrailClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteSession(SessionCore):
    """A moderation session held by the sidecar (its KV cache stays there)."""

    client: GuardrailClient

    def __init__(self, client: GuardrailClient, prompt: PromptInput, config: GuardConfig | None) -> None:
        super().__init__(client, prompt, config)
        self.client = client
        client._run(self._start_plan())

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk; `released` is the text now safe to show."""
        return self.client._run(self._feed_plan(chunk))

    def close(self) -> ChunkVerdict:
        """End of the stream: the tail is checked and released if safe."""
        return self.client._run(self._close_plan())

    def delete(self) -> None:
        """Free the session on the sidecar now rather than at its idle TTL."""
        self.client._run(self._delete_plan())

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.delete()


__all__ = ["Call", "GuardrailClient", "RemoteSession"]
