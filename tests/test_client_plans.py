"""The request plans both clients drive: a lost session is replayed once without showing text
twice, sync and async alike; fail_open releases what the sidecar still held."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from guardrail.client import AsyncGuardrailClient, FallbackChunkVerdict, GuardrailClient
from guardrail.server import Settings, create_app
from tests.conformance.keyword import make_keyword_model
from tests.test_server_support import ServerThread

TTL_S = 0.6
TEXT = ["Once upon a time ", "a dog ran to ", "the park and ", "played all day."]


@pytest.fixture(scope="module")
def short_lived(tokenizer: Any) -> Iterator[str]:
    """A sidecar whose idle sessions expire fast (a late chunk gets 410, as after a replica loss)."""
    with ServerThread(create_app(Settings(session_ttl_s=TTL_S), make_keyword_model(tokenizer))) as server:
        yield server.url


def test_sync_session_replays_after_410(short_lived: str) -> None:
    with GuardrailClient(short_lived) as client:
        session = client.session("story")
        shown = session.feed(TEXT[0]).released + session.feed(TEXT[1]).released
        first_id = session.id
        time.sleep(TTL_S * 2)  # the sidecar forgets the session
        for chunk in TEXT[2:]:
            shown += session.feed(chunk).released
        shown += session.close().released
        assert session.replays == 1 and session.id != first_id
        assert shown == "".join(TEXT)  # nothing shown twice, nothing lost


def test_async_session_replays_at_close(short_lived: str) -> None:
    async def main() -> tuple[str, int]:
        async with AsyncGuardrailClient(short_lived) as client:
            session = await client.session("story")
            shown = ""
            for chunk in TEXT:
                shown += (await session.feed(chunk)).released
            await asyncio.sleep(TTL_S * 2)
            shown += (await session.close()).released
            return shown, session.replays

    shown, replays = asyncio.run(main())
    assert replays == 1 and shown == "".join(TEXT)


def test_fail_open_releases_the_held_back_text(tokenizer: Any) -> None:
    server = ServerThread(create_app(Settings(), make_keyword_model(tokenizer)))
    with server:
        client = GuardrailClient(server.url, retries=0, fail_policy="fail_open")
        session = client.session("story")
        shown = session.feed(TEXT[0] + TEXT[1]).released
        assert len(shown) < len(TEXT[0] + TEXT[1])  # the sidecar holds the tail back
    degraded = session.feed(TEXT[2])
    assert isinstance(degraded, FallbackChunkVerdict) and not degraded.intercepted
    assert shown + degraded.released == "".join(TEXT[:3])
    client.close()
