"""The process-wide default guard, used wherever a consumer is given none."""

from __future__ import annotations

import asyncio
import threading

from guardrail.stream.bridge import AnyGuard

_default_guard: AnyGuard | None = None
_default_lock = threading.Lock()


def default_guard() -> AnyGuard:
    """The process-wide embedded `Guard`, created on first use (loading the model once)."""
    global _default_guard
    if _default_guard is None:
        with _default_lock:
            if _default_guard is None:
                from guardrail.guard import Guard

                _default_guard = Guard()
    return _default_guard


async def adefault_guard() -> AnyGuard:
    """`default_guard()` without blocking the event loop while the model loads."""
    return _default_guard if _default_guard is not None else await asyncio.to_thread(default_guard)


def set_default_guard(guard: AnyGuard | None) -> None:
    """Use this guard (for example a sidecar client or an instrumented guard) wherever none is given."""
    global _default_guard
    with _default_lock:
        _default_guard = guard


def resolve_guard(guard: AnyGuard | None) -> AnyGuard:
    return guard if guard is not None else default_guard()


async def aresolve_guard(guard: AnyGuard | None) -> AnyGuard:
    return guard if guard is not None else await adefault_guard()


__all__ = ["adefault_guard", "aresolve_guard", "default_guard", "resolve_guard", "set_default_guard"]
