"""The httpx client SDK against the real sidecar: same methods and types as the embedded Guard."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from guardrail.client import (
    AsyncGuardrailClient,
    FallbackChunkVerdict,
    FallbackVerdict,
    GuardrailAuthError,
    GuardrailClient,
    GuardrailRequestError,
    SidecarUnavailableError,
)
from guardrail.server import create_app
from guardrail.types import ChunkVerdict, DoneEvent, GenerationResult, GuardConfig, TokenEvent, Verdict
from tests.oracle import expected_outcome, keyword_model
from tests.test_server_support import ServerThread, free_port, lax_settings

STRICT = GuardConfig(tau=1, hold_back=1)


@pytest.fixture(scope="module")
def server(tokenizer: Any) -> Iterator[ServerThread]:
    with ServerThread(create_app(lax_settings(), keyword_model(tokenizer))) as running:
        yield running


def test_client_does_not_import_torch() -> None:
    code = ("import sys, guardrail.client; c = guardrail.client.GuardrailClient('http://127.0.0.1:9'); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_checks_and_generation(server: ServerThread) -> None:
    with GuardrailClient(server.url) as client:
        verdict = client.check_prompt("How do I bake bread?")
        assert type(verdict) is Verdict and verdict.label == "safe"
        assert client.check_response("q", "a bomb").unsafe
        events = list(client.generate("hi", max_new_tokens=6))
        assert isinstance(events[-1], DoneEvent)
        assert "".join(e.text for e in events if isinstance(e, TokenEvent)) == events[-1].text
        result = client.generate_text("hi", max_new_tokens=6, prefill="a bomb is", config=STRICT)
        assert isinstance(result, GenerationResult) and result.intercepted and "bomb" not in result.text
        with pytest.raises(GuardrailRequestError) as err:
            client.check_prompt("   ")
        assert err.value.status == 422 and isinstance(err.value, ValueError)


def test_session_feed_close_and_intercept(server: ServerThread, tokenizer: Any) -> None:
    with GuardrailClient(server.url, config=STRICT) as client:
        session = client.session("Tell me a story")
        assert session.prompt_verdict.label == "safe"
        released = ""
        for chunk in ["It was ", "a calm ", "day by ", "the sea."]:
            verdict = session.feed(chunk)
            assert type(verdict) is ChunkVerdict
            released += verdict.released
        released += session.close().released
        assert released == "It was a calm day by the sea."
        with client.session("story") as cut:
            verdicts = []
            for chunk in ["Then ", "a bomb ", "went ", "off ", "with ", "a bang "]:
                verdicts.append(cut.feed(chunk))
                if verdicts[-1].intercepted:
                    break
            expected = expected_outcome(tokenizer, "Then a bomb went off with a bang", STRICT)
            assert verdicts[-1].intercepted  # at the first scheduled check that reads the keyword
            assert verdicts[-1].intercept_index == expected.intercept_index
            assert "".join(v.released for v in verdicts) == expected.released
            with pytest.raises(GuardrailRequestError) as err:
                cut.feed("more ")
            assert err.value.status == 409


def test_guard_backend_switch(server: ServerThread) -> None:
    from guardrail import Guard

    guard = Guard(backend=server.url, config=STRICT)
    assert guard.check_prompt("hello").label == "safe"
    assert guard.generate_text("hi", max_new_tokens=4).usage.completion_tokens <= 4
    session = guard.session("p")
    chunk = session.feed("Hello there ")
    assert type(chunk) is ChunkVerdict and not chunk.intercepted  # a fallback verdict is a subclass
    assert chunk.released + session.close().released == "Hello there "
    guard.close()


def test_fail_closed_and_fail_open_when_unreachable() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    closed = GuardrailClient(dead, retries=1, backoff_s=0.01)
    verdict = closed.check_prompt("anything")
    assert isinstance(verdict, FallbackVerdict) and verdict.fail_policy == "fail_closed" and verdict.unsafe
    session = closed.session("p")
    chunk = session.feed("text ")
    assert isinstance(chunk, FallbackChunkVerdict) and chunk.intercepted and chunk.released == ""
    assert closed.fallbacks == 3
    with pytest.raises(SidecarUnavailableError):
        list(closed.generate("hi"))
    opened = GuardrailClient(dead, retries=0, fail_policy="fail_open")
    verdict = opened.check_response("p", "r")
    assert verdict.label == "safe" and verdict.fail_policy == "fail_open"  # type: ignore[attr-defined]
    assert opened.session("p").feed("shown anyway ").released == "shown anyway "
    with pytest.raises(ValueError):
        GuardrailClient(dead, fail_policy="maybe")  # type: ignore[arg-type]


def test_retries_on_503_and_429_then_succeeds() -> None:
    calls: list[int] = []

    async def flaky(request: Request) -> JSONResponse:
        calls.append(1)
        if len(calls) == 1:
            return JSONResponse({"error": {"message": "busy"}}, status_code=429, headers={"Retry-After": "0"})
        if len(calls) == 2:
            return JSONResponse({"error": {"message": "loading"}}, status_code=503)
        return JSONResponse({"label": "safe", "score": 0.1, "threshold": 0.5})

    app = Starlette(routes=[Route("/v1/check", flaky, methods=["POST"])])
    with ServerThread(app) as srv:
        client = GuardrailClient(srv.url, retries=3, backoff_s=0.01)
        assert type(client.check_prompt("x")) is Verdict and len(calls) == 3
        calls.clear()
        exhausted = GuardrailClient(srv.url, retries=1, backoff_s=0.01).check_prompt("x")
        assert isinstance(exhausted, FallbackVerdict) and len(calls) == 2


def test_api_key_from_option(tokenizer: Any) -> None:
    with ServerThread(create_app(lax_settings(api_key="k"), keyword_model(tokenizer))) as srv:
        assert GuardrailClient(srv.url, api_key="k").check_prompt("hi").label == "safe"
        with pytest.raises(GuardrailAuthError):
            GuardrailClient(srv.url, api_key="wrong").check_prompt("hi")


def test_async_client(server: ServerThread) -> None:
    async def main() -> None:
        async with AsyncGuardrailClient(server.url, config=STRICT) as client:
            verdicts = await asyncio.gather(*(client.check_prompt(f"q{i}") for i in range(4)))
            assert all(type(v) is Verdict for v in verdicts)
            events = [e async for e in client.generate("hi", max_new_tokens=4)]
            assert isinstance(events[-1], DoneEvent)
            assert (await client.generate_text("hi", max_new_tokens=4)).text == events[-1].text
            session = await client.session("story")
            first = await session.feed("Hello there ")
            last = await session.close()
            assert (first.released + last.released) == "Hello there "
        dead = AsyncGuardrailClient(f"http://127.0.0.1:{free_port()}", retries=0)
        assert (await dead.check_prompt("x")).unsafe
        await dead.close()

    asyncio.run(main())
