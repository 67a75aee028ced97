"""guardrail: explicit safety signals for LLM applications.

Heavy modules (torch, transformers) load lazily, so `from guardrail import GuardrailClient`
stays small for apps that only talk to a sidecar.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from guardrail.moderation import ModerationResponse, ModerationResult
from guardrail.types import (
    CategoryRule,
    ChatMessage,
    ChunkVerdict,
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    TokenEvent,
    Verdict,
)

if TYPE_CHECKING:
    from guardrail.client import AsyncGuardrailClient, GuardrailClient
    from guardrail.embedded import EmbeddedGuard
    from guardrail.guard import Guard

__version__ = "0.1.0"

__all__ = [
    "AsyncGuardrailClient",
    "CategoryRule",
    "ChatMessage",
    "ChunkVerdict",
    "DoneEvent",
    "EmbeddedGuard",
    "GenerationEvent",
    "GenerationResult",
    "Guard",
    "GuardConfig",
    "GuardrailClient",
    "InterceptEvent",
    "ModerationResponse",
    "ModerationResult",
    "ScoreEvent",
    "TokenEvent",
    "Verdict",
]


def __getattr__(name: str) -> Any:
    if name == "Guard":
        from guardrail.guard import Guard

        return Guard
    if name == "EmbeddedGuard":
        from guardrail.embedded import EmbeddedGuard

        return EmbeddedGuard
    if name in ("GuardrailClient", "AsyncGuardrailClient"):
        import guardrail.client as client

        return getattr(client, name)
    raise AttributeError(f"module 'guardrail' has no attribute {name!r}")
