"""`AsyncGuardrailClient`: the same methods and types as `GuardrailClient`, for asyncio.

Every request sequence is a plan from `_base` (shared with the sync client); this module only
drives them with `httpx.AsyncClient`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import httpx

from guardrail.client._base import (
    Attempts,
    ClientCore,
    ClientOptions,
    FailPolicy,
    Plan,
    SessionCore,
    generate_body,
    raise_for_error,
    trace_headers,
)
from guardrail.client.errors import GuardrailError, SidecarUnavailableError
from guardrail.client.sse import aiter_events
from guardrail.events import ResultCollector
from guardrail.moderation import ModerationInput, ModerationResponse
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, GuardConfig, PromptInput, Verdict

T = TypeVar("T")


class AsyncGuardrailClient(ClientCore):
    """Checks, guarded generation and stream moderation against `guardrail serve`, async.

    The same retries, fail policy, config and trace-context rules as `GuardrailClient`.
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, config: GuardConfig | None = None,
                 api_key: str | None = None, timeout: float = 30.0, connect_timeout: float = 5.0,
                 retries: int = 3, backoff_s: float = 0.2, max_backoff_s: float = 5.0,
                 fail_policy: FailPolicy = "fail_closed", headers: dict[str, str] | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(ClientOptions(base_url, config, api_key, timeout, connect_timeout, retries,
                                       backoff_s, max_backoff_s, fail_policy, dict(headers or {})))
        self._http = httpx.AsyncClient(transport=transport, **self.options.httpx_kwargs())

    # -- plumbing -----------------------------------------------------------------------------
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
        request = self._http.build_request(method, path, json=body, headers=trace_headers())
        attempts = Attempts(self.options)
        while True:
            try:
                response = await self._http.send(request)
            except httpx.TransportError as exc:
                delay = attempts.after_error(exc)
            else:
                if (delay_or_none := attempts.after_response(response)) is None:
                    raise_for_error(response)
                    return response
                delay = delay_or_none
            await asyncio.sleep(delay)

    async def _run(self, plan: Plan[T]) -> T:
        """Drive a plan: make each request it yields and send it the answer (or the error)."""
        try:
            call = next(plan)
            while True:
                try:
                    response = await self._request(call.method, call.path, call.body)
                except GuardrailError as exc:
                    call = plan.throw(exc)
                else:
                    call = plan.send(response)
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def effective_config(self) -> GuardConfig:
        """The config the sidecar judges this client's requests by: its calibrated defaults with
        the fields this client set (asks the sidecar once when not yet known)."""
        return await self._run(self._defaults_plan())

    # -- checks -------------------------------------------------------------------------------
    async def check_prompt(self, prompt: PromptInput) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        return await self._run(self._check_plan(prompt, None))

    async def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        return await self._run(self._check_plan(prompt, response))

    async def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        """One verdict per request, in one round trip (the sidecar batches them)."""
        return await self._run(self._batch_plan([(p, None) for p in prompts]))

    async def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        """One verdict per (request, response) pair, in one round trip."""
        return await self._run(self._batch_plan(list(pairs)))

    async def moderations(self, input: ModerationInput, *,
                          config: GuardConfig | None = None) -> ModerationResponse:
        """OpenAI's moderation call, answered by the sidecar's `/v1/moderations` in one batched pass."""
        return await self._run(self._moderations_plan(input, config))

    # -- generation ---------------------------------------------------------------------------
    async def generate(self, prompt: PromptInput, *, max_new_tokens: int = 128, prefill: str | None = None,
                       guard: bool = True, temperature: float = 0.0, top_p: float = 1.0,
                       seed: int | None = None, config: GuardConfig | None = None,
                       ) -> AsyncIterator[GenerationEvent]:
        """Stream guarded generation events (token, score, intercept, done) from the sidecar."""
        body = generate_body(prompt, self.options.config_json(config), max_new_tokens=max_new_tokens,
                             prefill=prefill, guard=guard, temperature=temperature, top_p=top_p, seed=seed)
        request = self._http.build_request("POST", "/v1/generate", json=body, headers=trace_headers())
        attempts = Attempts(self.options)
        while True:
            try:
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                await asyncio.sleep(attempts.after_error(exc))
                continue
            try:
                delay = attempts.after_response(response)
                if delay is None:
                    if response.status_code >= 400:
                        await response.aread()
                        raise_for_error(response)
                    async for event in aiter_events(response):
                        yield event
                    return
            finally:
                await response.aclose()
            await asyncio.sleep(delay)

    async def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end: the final text and whether it was cut."""
        collector = ResultCollector()
        async for event in self.generate(prompt, **kwargs):
            collector.add(event)
        return collector.result(SidecarUnavailableError)

    # -- stream moderation ----------------------------------------------------------------------
    async def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> AsyncRemoteSession:
        """Moderate another model's stream on the sidecar: `await feed(chunk)`, then `await close()`."""
        session = AsyncRemoteSession(self, prompt, config)
        await session.start()
        return session

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncGuardrailClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncRemoteSession(SessionCore):
    """A moderation session held by the sidecar (its KV cache stays there)."""

    client: AsyncGuardrailClient

    def __init__(self, client: AsyncGuardrailClient, prompt: PromptInput, config: GuardConfig | None) -> None:
        super().__init__(client, prompt, config)
        self.client = client

    async def start(self) -> Verdict | None:
        """Open the session on the sidecar (the request's check runs here)."""
        return await self.client._run(self._start_plan())

    async def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk; `released` is the text now safe to show."""
        return await self.client._run(self._feed_plan(chunk))

    async def close(self) -> ChunkVerdict:
        """End of the stream: the tail is checked and released if safe."""
        return await self.client._run(self._close_plan())

    async def delete(self) -> None:
        """Free the session on the sidecar now rather than at its idle TTL."""
        await self.client._run(self._delete_plan())

    async def __aenter__(self) -> AsyncRemoteSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.delete()
