"""The sidecar client SDK: the embedded `Guard`'s methods and types over HTTP.

Imports httpx and pydantic only (never torch or transformers), so an application that
talks to a sidecar starts fast and small.
"""

from __future__ import annotations

from guardrail.client._base import FailPolicy, FallbackChunkVerdict, FallbackVerdict
from guardrail.client.aio import AsyncGuardrailClient, AsyncRemoteSession
from guardrail.client.errors import (
    GuardrailAuthError,
    GuardrailError,
    GuardrailRequestError,
    SessionClosedRemoteError,
    SidecarUnavailableError,
)
from guardrail.client.sync import GuardrailClient, RemoteSession

__all__ = [
    "AsyncGuardrailClient",
    "AsyncRemoteSession",
    "FailPolicy",
    "FallbackChunkVerdict",
    "FallbackVerdict",
    "GuardrailAuthError",
    "GuardrailClient",
    "GuardrailError",
    "GuardrailRequestError",
    "RemoteSession",
    "SessionClosedRemoteError",
    "SidecarUnavailableError",
]
