"""Static proof that every guard and session implements its protocol.

mypy checks this module with the package (`mypy guardrail`): a guard, client or wrapper that
drifts from `guardrail.protocols` fails here, before any user meets it. Nothing runs at import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from guardrail.client import AsyncGuardrailClient, AsyncRemoteSession, GuardrailClient, RemoteSession
    from guardrail.embedded import EmbeddedGuard
    from guardrail.guard import Guard
    from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol, SessionProtocol
    from guardrail.stream.bridge import ThreadedGuard, ThreadedSession
    from guardrail.tracing import (
        AsyncInstrumentedGuard,
        AsyncInstrumentedSession,
        InstrumentedGuard,
        InstrumentedSession,
    )

    def _sync_guards(guard: Guard, embedded: EmbeddedGuard, client: GuardrailClient,
                     traced: InstrumentedGuard) -> None:
        _guard: GuardProtocol = guard
        _embedded: GuardProtocol = embedded
        _client: GuardProtocol = client
        _traced: GuardProtocol = traced

    def _async_guards(client: AsyncGuardrailClient, traced: AsyncInstrumentedGuard,
                      threaded: ThreadedGuard) -> None:
        _client: AsyncGuardProtocol = client
        _traced: AsyncGuardProtocol = traced
        _threaded: AsyncGuardProtocol = threaded

    def _sessions(remote: RemoteSession, traced: InstrumentedSession, aremote: AsyncRemoteSession,
                  atraced: AsyncInstrumentedSession, threaded: ThreadedSession) -> None:
        _remote: SessionProtocol = remote
        _traced: SessionProtocol = traced
        _aremote: AsyncSessionProtocol = aremote
        _atraced: AsyncSessionProtocol = atraced
        _threaded: AsyncSessionProtocol = threaded
