"""The guard seam as the LangChain package uses it: sync or async, embedded or remote.

Every runnable and chat model accepts any `GuardProtocol` (embedded `Guard`, `GuardrailClient`,
an instrumented guard) or `AsyncGuardProtocol` (`AsyncGuardrailClient` and its wrappers). Sync
entry points need a sync guard; async ones await an async guard's coroutines and run a sync
guard's CPU-bound calls in a worker thread, so the event loop stays free.
"""

from __future__ import annotations

from typing import TypeAlias, cast

from guardrail.protocols import AsyncGuardProtocol, GuardProtocol, PromptInput
from guardrail.stream.bridge import as_async, is_async_guard
from guardrail.stream.default import aresolve_guard, resolve_guard
from guardrail.types import Verdict

AnyGuard: TypeAlias = GuardProtocol | AsyncGuardProtocol
"""A guard of either kind, as the `guard` fields accept it."""


def sync_guard(guard: AnyGuard | None) -> GuardProtocol:
    """The guard for a sync call: the given one, or the shared embedded guard."""
    resolved: AnyGuard = resolve_guard(guard)
    if is_async_guard(resolved):
        raise TypeError(f"{type(resolved).__name__} is an async guard: use ainvoke/astream/abatch, "
                        "or pass a sync guard (Guard, GuardrailClient)")
    return cast(GuardProtocol, resolved)


async def async_guard(guard: AnyGuard | None) -> AnyGuard:
    """The guard for an async call; the shared embedded guard loads off the event loop."""
    return await aresolve_guard(guard)


async def acheck_prompt(guard: AnyGuard, prompt: PromptInput) -> Verdict:
    """Await an async guard's check; run a sync guard's in a worker thread (`as_async`)."""
    return await as_async(guard).check_prompt(prompt)


async def acheck_response(guard: AnyGuard, prompt: PromptInput, response: str) -> Verdict:
    return await as_async(guard).check_response(prompt, response)
