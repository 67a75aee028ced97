"""The implementations the conformance suite runs over, each behind the same small interface.

`Surface.guard` is a sync `GuardProtocol` the tests call; `Surface.aguard` the same guard seen
as an `AsyncGuardProtocol`, and `Surface.run` runs a coroutine where that guard lives. Async
implementations are reached through `AwaitingGuard`, which awaits each call on one event loop,
so a test is written once. A new surface joins by adding one entry to `SURFACES` and a branch
in `conftest.surface`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol
from guardrail.stream.bridge import as_async
from guardrail.types import ChunkVerdict, GenerationEvent, GenerationResult, GuardConfig, PromptInput, Verdict

T = TypeVar("T")

SURFACES = ("embedded", "uvicorn", "ray", "instrumented", "async", "instrumented_async")
REMOTE = frozenset({"uvicorn", "ray", "async", "instrumented_async"})


@dataclass
class Surface:
    name: str
    guard: GuardProtocol
    aguard: AsyncGuardProtocol
    run: Callable[[Coroutine[Any, Any, Any]], Any]

    @property
    def remote(self) -> bool:
        return self.name in REMOTE


def sync_surface(name: str, guard: GuardProtocol) -> Surface:
    return Surface(name, guard, as_async(guard), asyncio.run)


class AwaitingSession:
    def __init__(self, owner: AwaitingGuard, session: AsyncSessionProtocol) -> None:
        self._owner = owner
        self._session = session
        self.prompt_verdict: Verdict | None = session.prompt_verdict

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        return self._owner.run(self._session.feed(chunk))

    def close(self) -> ChunkVerdict:
        return self._owner.run(self._session.close())


class AwaitingGuard:
    """A sync view of an async guard: each call is awaited on this guard's own event loop."""

    def __init__(self, guard: AsyncGuardProtocol) -> None:
        self.inner = guard
        self.loop = asyncio.new_event_loop()

    def run(self, awaitable: Awaitable[T]) -> T:
        return self.loop.run_until_complete(awaitable)

    def check_prompt(self, prompt: PromptInput) -> Verdict:
        return self.run(self.inner.check_prompt(prompt))

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        return self.run(self.inner.check_response(prompt, response))

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        return self.run(self.inner.check_prompts(prompts))  # type: ignore[attr-defined, no-any-return]

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        return self.run(self.inner.check_responses(pairs))  # type: ignore[attr-defined, no-any-return]

    def moderations(self, input: Any, *, config: GuardConfig | None = None) -> Any:
        return self.run(self.inner.moderations(input, config=config))

    def generate(self, prompt: PromptInput, **kwargs: Any) -> Iterator[GenerationEvent]:
        async def collect(events: AsyncIterator[GenerationEvent]) -> list[GenerationEvent]:
            return [event async for event in events]

        return iter(self.run(collect(self.inner.generate(prompt, **kwargs))))

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        return self.run(self.inner.generate_text(prompt, **kwargs))

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> AwaitingSession:
        return AwaitingSession(self, self.run(self.inner.session(prompt, config=config)))

    def close(self) -> None:
        self.run(self.inner.close())
        self.loop.close()


def async_surface(name: str, guard: AsyncGuardProtocol) -> Surface:
    awaiting = AwaitingGuard(guard)
    return Surface(name, awaiting, guard, awaiting.run)
