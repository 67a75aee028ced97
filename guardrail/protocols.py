"""The typed seam every surface is written against: a guard and its moderation session.

The embedded `Guard`, the sidecar clients and any wrapper (tracing) implement these
protocols; decorators, `moderate`, the LangChain package and tracing accept them. A wrapper
that drifts from the contract fails mypy rather than a user.

`moderations` (OpenAI's moderation call) is part of the typed contract, so every guard of this
package is proven to have it (`guardrail/_conformance.py`), but not of the runtime `isinstance`
check: a guard an application wrote before it existed still passes where a guard is validated
at runtime (the LangChain models' `guard` field), and only a call to `moderations` needs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from guardrail.types import (
    ChunkVerdict,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    PromptInput,
    Verdict,
)

if TYPE_CHECKING:
    from guardrail.moderation import ModerationInput, ModerationResponse

__all__ = [
    "AsyncGuardProtocol",
    "AsyncSessionProtocol",
    "GuardProtocol",
    "PromptInput",
    "SessionProtocol",
]


@runtime_checkable
class SessionProtocol(Protocol):
    """A moderated stream: `feed` each chunk, then `close`; `released` is safe to show."""

    @property
    def prompt_verdict(self) -> Verdict | None: ...

    def feed(self, chunk: str | bytes) -> ChunkVerdict: ...

    def close(self) -> ChunkVerdict: ...


@runtime_checkable
class AsyncSessionProtocol(Protocol):
    """The async twin of `SessionProtocol`."""

    @property
    def prompt_verdict(self) -> Verdict | None: ...

    async def feed(self, chunk: str | bytes) -> ChunkVerdict: ...

    async def close(self) -> ChunkVerdict: ...


@runtime_checkable
class GuardProtocol(Protocol):
    """What an application may call on any guard, embedded or remote."""

    def check_prompt(self, prompt: PromptInput) -> Verdict: ...

    def check_response(self, prompt: PromptInput, response: str) -> Verdict: ...

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]: ...

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]: ...

    if TYPE_CHECKING:  # a static member only: see the module's note on `moderations`
        def moderations(
            self, input: ModerationInput, *, config: GuardConfig | None = None
        ) -> ModerationResponse: ...

    def generate(
        self,
        prompt: PromptInput,
        *,
        max_new_tokens: int = 128,
        prefill: str | None = None,
        guard: bool = True,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        config: GuardConfig | None = None,
    ) -> Iterator[GenerationEvent]: ...

    def generate_text(self, prompt: PromptInput, **kwargs: object) -> GenerationResult: ...

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> SessionProtocol: ...

    def close(self) -> None: ...


@runtime_checkable
class AsyncGuardProtocol(Protocol):
    """The async twin of `GuardProtocol` (the async sidecar client and its wrappers)."""

    async def check_prompt(self, prompt: PromptInput) -> Verdict: ...

    async def check_response(self, prompt: PromptInput, response: str) -> Verdict: ...

    async def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]: ...

    async def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]: ...

    if TYPE_CHECKING:  # a static member only: see the module's note on `moderations`
        async def moderations(
            self, input: ModerationInput, *, config: GuardConfig | None = None
        ) -> ModerationResponse: ...

    def generate(
        self,
        prompt: PromptInput,
        *,
        max_new_tokens: int = 128,
        prefill: str | None = None,
        guard: bool = True,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        config: GuardConfig | None = None,
    ) -> AsyncIterator[GenerationEvent]: ...

    async def generate_text(self, prompt: PromptInput, **kwargs: object) -> GenerationResult: ...

    async def session(
        self, prompt: PromptInput, *, config: GuardConfig | None = None
    ) -> AsyncSessionProtocol: ...

    async def close(self) -> None: ...
