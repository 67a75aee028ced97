"""The sync/async seam: any guard or session, seen as the async protocol where a caller awaits.

The embedded guard is CPU-bound and synchronous; under asyncio its calls run in a worker
thread so the event loop stays free. An async guard (the async sidecar client, an instrumented
async guard) is awaited directly. Which one a value is is decided once, here.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeAlias

from typing_extensions import TypeIs

from guardrail.moderation import ModerationInput, ModerationResponse
from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol, SessionProtocol
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, GuardConfig, PromptInput, Verdict

AnyGuard: TypeAlias = GuardProtocol | AsyncGuardProtocol
AnySession: TypeAlias = SessionProtocol | AsyncSessionProtocol


def is_async_guard(guard: AnyGuard) -> TypeIs[AsyncGuardProtocol]:
    """True for guards whose methods are coroutines."""
    return inspect.iscoroutinefunction(guard.check_prompt)


def is_async_session(session: AnySession) -> TypeIs[AsyncSessionProtocol]:
    return inspect.iscoroutinefunction(session.feed)


def require_sync(guard: AnyGuard) -> GuardProtocol:
    """The guard, when a sync caller can use it; an async one needs an async caller."""
    if is_async_guard(guard):
        raise TypeError(f"{type(guard).__name__} is async; use it from async code (ainvoke, async for)")
    return guard


def require_sync_session(session: AnySession) -> SessionProtocol:
    if is_async_session(session):
        raise TypeError(f"{type(session).__name__} is async; use afeed()/aclose()")
    return session


_END = object()


def _next(iterator: Iterator[GenerationEvent]) -> object:
    return next(iterator, _END)


class ThreadedSession:
    """A sync session as an `AsyncSessionProtocol`: each call runs in a worker thread."""

    def __init__(self, session: SessionProtocol) -> None:
        self.inner = session
        self.prompt_verdict: Verdict | None = session.prompt_verdict

    async def feed(self, chunk: str | bytes) -> ChunkVerdict:
        return await asyncio.to_thread(self.inner.feed, chunk)

    async def close(self) -> ChunkVerdict:
        return await asyncio.to_thread(self.inner.close)

    async def delete(self) -> None:
        delete = getattr(self.inner, "delete", None)
        if callable(delete):
            await asyncio.to_thread(delete)


class ThreadedGuard:
    """A sync guard as an `AsyncGuardProtocol`: each call runs in a worker thread."""

    def __init__(self, guard: GuardProtocol) -> None:
        self.inner = guard

    async def check_prompt(self, prompt: PromptInput) -> Verdict:
        return await asyncio.to_thread(self.inner.check_prompt, prompt)

    async def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        return await asyncio.to_thread(self.inner.check_response, prompt, response)

    async def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        method = getattr(self.inner, "check_prompts", None)
        if method is None:
            return [await self.check_prompt(p) for p in prompts]
        result: list[Verdict] = await asyncio.to_thread(method, prompts)
        return result

    async def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        method = getattr(self.inner, "check_responses", None)
        if method is None:
            return [await self.check_response(p, r) for p, r in pairs]
        result: list[Verdict] = await asyncio.to_thread(method, pairs)
        return result

    async def moderations(self, input: ModerationInput, *,
                          config: GuardConfig | None = None) -> ModerationResponse:
        return await asyncio.to_thread(self.inner.moderations, input, config=config)

    async def generate(
        self, prompt: PromptInput, *, max_new_tokens: int = 128, prefill: str | None = None,
        guard: bool = True, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
        config: GuardConfig | None = None,
    ) -> AsyncIterator[GenerationEvent]:
        events = self.inner.generate(prompt, max_new_tokens=max_new_tokens, prefill=prefill, guard=guard,
                                     temperature=temperature, top_p=top_p, seed=seed, config=config)
        while (event := await asyncio.to_thread(_next, events)) is not _END:
            yield event  # type: ignore[misc]

    async def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        return await asyncio.to_thread(self.inner.generate_text, prompt, **kwargs)

    async def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> ThreadedSession:
        return ThreadedSession(await asyncio.to_thread(self.inner.session, prompt, config=config))

    async def close(self) -> None:
        await asyncio.to_thread(self.inner.close)


def as_async(guard: AnyGuard) -> AsyncGuardProtocol:
    """The guard itself when it is async, else a view that runs it in worker threads."""
    return guard if is_async_guard(guard) else ThreadedGuard(guard)


def as_async_session(session: AnySession) -> AsyncSessionProtocol:
    return session if is_async_session(session) else ThreadedSession(session)


async def acall(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """Await `obj.<name>` (or `obj.a<name>`) where it is async; else run it in a worker thread.

    Kept for callers written before `as_async`; new code awaits `as_async(guard).<name>`.
    """
    method = getattr(obj, "a" + name, None)
    if method is None or not inspect.iscoroutinefunction(method):
        method = getattr(obj, name)
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await asyncio.to_thread(method, *args, **kwargs)
    return await result if inspect.isawaitable(result) else result


__all__ = [
    "AnyGuard", "AnySession", "ThreadedGuard", "ThreadedSession", "acall", "as_async", "as_async_session",
    "is_async_guard", "is_async_session", "require_sync", "require_sync_session",
]
