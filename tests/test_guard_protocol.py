"""Every guard and session implements its protocol: at runtime here, statically in
`guardrail/_conformance.py` (checked by `mypy guardrail`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from guardrail import Guard
from guardrail.client import AsyncGuardrailClient, GuardrailClient
from guardrail.embedded import EmbeddedGuard
from guardrail.protocols import AsyncGuardProtocol, AsyncSessionProtocol, GuardProtocol, SessionProtocol
from guardrail.server import Settings, create_app
from guardrail.stream.bridge import ThreadedGuard, as_async, is_async_guard, require_sync
from guardrail.tracing import AsyncInstrumentedGuard, InstrumentedGuard, instrument
from tests.conformance.keyword import make_keyword_model
from tests.test_server_support import ServerThread


@pytest.fixture(scope="module")
def served(tokenizer: Any) -> Iterator[tuple[Any, str]]:
    model = make_keyword_model(tokenizer)
    with ServerThread(create_app(Settings(), model)) as server:
        yield model, server.url


def test_sync_guards_and_sessions(served: tuple[Any, str]) -> None:
    model, url = served
    provider = TracerProvider()
    guards: list[Any] = [Guard(safety_model=model), EmbeddedGuard(model), Guard(backend=url),
                         GuardrailClient(url)]
    guards.append(instrument(guards[0], tracer_provider=provider))
    for guard in guards:
        assert isinstance(guard, GuardProtocol), type(guard).__name__
        assert not is_async_guard(guard) and require_sync(guard) is guard
        session = guard.session("story")
        assert isinstance(session, SessionProtocol), type(session).__name__
        session.feed("Hello ")
        session.close()
    assert isinstance(guards[-1], InstrumentedGuard)


def test_async_guards_and_sessions(served: tuple[Any, str]) -> None:
    model, url = served

    async def main() -> None:
        client = AsyncGuardrailClient(url)
        guards: list[Any] = [client, instrument(client, tracer_provider=TracerProvider()),
                             ThreadedGuard(Guard(safety_model=model)), as_async(Guard(backend=url))]
        assert isinstance(guards[1], AsyncInstrumentedGuard)
        for guard in guards:
            assert isinstance(guard, AsyncGuardProtocol), type(guard).__name__
            assert is_async_guard(guard) and as_async(guard) is guard
            with pytest.raises(TypeError, match="async"):
                require_sync(guard)
            session = await guard.session("story")
            assert isinstance(session, AsyncSessionProtocol), type(session).__name__
            await session.feed("Hello ")
            await session.close()
        await client.close()

    asyncio.run(main())
