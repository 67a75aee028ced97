"""One body for the sync and async twins: sans-IO plans and the two drivers that run them.

A surface (chat model, runnable) writes what happens in a call once, as a generator that
yields `Op`s (check the request, open a session, take the next upstream chunk, feed it, ...)
and the items its consumer receives. `SyncDriver` performs each op with blocking calls,
`AsyncDriver` with awaits (a sync guard's CPU-bound calls in a worker thread); that is the
only place the two differ. The drivers own the upstream iterator and the moderation session,
so however a call ends (done, flagged, raised, cancelled, abandoned) both are released.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

from guardrail.protocols import GuardProtocol, PromptInput
from guardrail.streaming import StreamModerator
from guardrail.types import ChunkVerdict, GuardConfig, Verdict
from langchain_guardrail._guards import AnyGuard, acheck_prompt, acheck_response

END = object()
"""What `next` answers once the upstream stream has ended."""

OpKind = Literal["check_prompt", "check_response", "open", "gather", "invoke", "stream", "next", "feed",
                 "close", "release", "emit"]


@dataclass(frozen=True)
class Op:
    """One operation a plan needs done; the driver performs it and sends back the result."""

    kind: OpKind
    arg: Any = None


T = TypeVar("T")
Plan = Generator[Any, Any, T]
"""Yields `Op`s (answered by the driver) and output items (handed to the consumer); returns the
call's result for invoke-style plans."""


class SyncDriver:
    """Performs a plan's operations with blocking calls. Surfaces add `invoke`, `stream`, `emit`."""

    def __init__(self, guard: GuardProtocol, config: GuardConfig | None, chunk_chars: int) -> None:
        self.guard, self.config, self.chunk_chars = guard, config, chunk_chars
        self.mod: StreamModerator | None = None
        self.upstream: Iterator[object] | None = None

    def check_prompt(self, prompt: PromptInput) -> Verdict:
        return self.guard.check_prompt(prompt)

    def check_response(self, request: tuple[PromptInput, str]) -> Verdict:
        return self.guard.check_response(*request)

    def open(self, prompt: PromptInput) -> StreamModerator:
        self.mod = StreamModerator(self.guard, prompt, config=self.config, chunk_chars=self.chunk_chars)
        return self.mod

    def gather(self, _: object) -> object:
        raise NotImplementedError

    def invoke(self, value: object) -> object:
        raise NotImplementedError

    def stream(self, value: object) -> None:
        raise NotImplementedError

    def emit(self, event: tuple[str, Verdict | ChunkVerdict]) -> None:
        raise NotImplementedError

    def next(self, _: object) -> object:
        assert self.upstream is not None
        return next(self.upstream, END)

    def feed(self, text: str) -> str:
        assert self.mod is not None
        return self.mod.feed(text)

    def close(self, _: object) -> str:
        assert self.mod is not None
        return self.mod.close()

    def release(self, _: object = None) -> None:
        """Close the upstream and free the session (a no-op for a session that ended normally)."""
        upstream, self.upstream = self.upstream, None
        close = getattr(upstream, "close", None)
        if close is not None:
            close()
        if self.mod is not None:
            self.mod.abort()

    def perform(self, op: Op) -> Any:
        return getattr(self, op.kind)(op.arg)

    def run(self, plan: Plan[T]) -> T:
        """Run a plan that emits nothing and returns a result."""
        try:
            op = next(plan)
            while True:
                op = plan.send(self.perform(op))
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            self.release()

    def iterate(self, plan: Plan[None]) -> Iterator[Any]:
        """Run a streaming plan, yielding its output items as they come."""
        try:
            step = next(plan, END)
            while step is not END:
                if isinstance(step, Op):
                    step = plan.send(self.perform(step))
                else:
                    yield step
                    step = next(plan, END)
        except StopIteration:
            pass
        finally:
            plan.close()
            self.release()


class AsyncDriver:
    """The same operations with awaits; a sync guard's calls run in a worker thread."""

    def __init__(self, guard: AnyGuard, config: GuardConfig | None, chunk_chars: int) -> None:
        self.guard, self.config, self.chunk_chars = guard, config, chunk_chars
        self.mod: StreamModerator | None = None
        self.upstream: AsyncIterator[object] | None = None

    async def check_prompt(self, prompt: PromptInput) -> Verdict:
        return await acheck_prompt(self.guard, prompt)

    async def check_response(self, request: tuple[PromptInput, str]) -> Verdict:
        return await acheck_response(self.guard, *request)

    async def open(self, prompt: PromptInput) -> StreamModerator:
        self.mod = await StreamModerator.acreate(self.guard, prompt, config=self.config,
                                                 chunk_chars=self.chunk_chars)
        return self.mod

    async def gather(self, _: object) -> object:
        raise NotImplementedError

    async def invoke(self, value: object) -> object:
        raise NotImplementedError

    async def stream(self, value: object) -> None:
        raise NotImplementedError

    async def emit(self, event: tuple[str, Verdict | ChunkVerdict]) -> None:
        raise NotImplementedError

    async def next(self, _: object) -> object:
        assert self.upstream is not None
        return await anext(self.upstream, END)

    async def feed(self, text: str) -> str:
        assert self.mod is not None
        return await self.mod.afeed(text)

    async def close(self, _: object) -> str:
        assert self.mod is not None
        return await self.mod.aclose()

    async def release(self, _: object = None) -> None:
        upstream, self.upstream = self.upstream, None
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()
        if self.mod is not None:
            await self.mod.aabort()

    async def perform(self, op: Op) -> Any:
        return await getattr(self, op.kind)(op.arg)

    async def run(self, plan: Plan[T]) -> T:
        try:
            op = next(plan)
            while True:
                op = plan.send(await self.perform(op))
        except StopIteration as done:
            return cast(T, done.value)
        finally:
            await self.release()

    async def iterate(self, plan: Plan[None]) -> AsyncIterator[Any]:
        try:
            step = next(plan, END)
            while step is not END:
                if isinstance(step, Op):
                    step = plan.send(await self.perform(step))
                else:
                    yield step
                    step = next(plan, END)
        except StopIteration:
            pass
        finally:
            plan.close()
            await self.release()
