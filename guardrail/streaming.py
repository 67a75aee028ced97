"""Moderate any stream of text chunks with a guard's moderation session.

`moderate(stream, prompt=...)` wraps a sync or async iterator of text chunks (another model's
output) and yields only text that a safe check has covered. The implementation lives in
`guardrail.stream` (one module per concern); this module keeps every public import working.

Everything here is typed against `guardrail.protocols`, so the embedded guard, the sidecar
clients (sync and async) and instrumented guards are interchangeable.
"""

from __future__ import annotations

from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol, SessionProtocol
from guardrail.stream.adapters import (
    anthropic_delta_text,
    anthropic_text,
    openai_delta_text,
    openai_text,
)
from guardrail.stream.bridge import AnyGuard, AnySession, acall, as_async, is_async_guard, require_sync
from guardrail.stream.default import adefault_guard, default_guard, resolve_guard, set_default_guard
from guardrail.stream.moderate import (
    DEFAULT_REPLACEMENT,
    OnViolation,
    moderate,
    moderate_anthropic,
    moderate_openai,
)
from guardrail.stream.moderator import (
    Replacement,
    StreamModerator,
    VerdictHook,
    judge,
    violation,
    violation_message,
)
from guardrail.stream.prompts import NO_PROMPT, PromptLike, as_prompt

GuardLike = GuardProtocol
"""Kept for imports of the old name: the guard protocol."""
SessionLike = SessionProtocol
"""Kept for imports of the old name: the session protocol."""

__all__ = [
    "DEFAULT_REPLACEMENT",
    "NO_PROMPT",
    "AnyGuard",
    "AnySession",
    "AsyncGuardProtocol",
    "AsyncSessionProtocol",
    "GuardLike",
    "GuardProtocol",
    "OnViolation",
    "PromptLike",
    "Replacement",
    "SessionLike",
    "SessionProtocol",
    "StreamModerator",
    "VerdictHook",
    "acall",
    "adefault_guard",
    "anthropic_delta_text",
    "anthropic_text",
    "as_async",
    "as_prompt",
    "default_guard",
    "is_async_guard",
    "judge",
    "moderate",
    "moderate_anthropic",
    "moderate_openai",
    "openai_delta_text",
    "openai_text",
    "require_sync",
    "resolve_guard",
    "set_default_guard",
    "violation",
    "violation_message",
]


def __getattr__(name: str) -> object:
    """`_default_guard` reads the current default (it lives in `guardrail.stream.default`)."""
    if name == "_default_guard":
        from guardrail.stream import default

        return default._default_guard
    raise AttributeError(f"module 'guardrail.streaming' has no attribute {name!r}")
