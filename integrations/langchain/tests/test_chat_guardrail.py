"""`ChatGuardrail`: a chain whose model is the guard's own guarded generation, on a real sidecar."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate

from guardrail import Guard, GuardConfig
from guardrail.client import AsyncGuardrailClient
from guardrail.server import Settings, create_app
from guardrail.server.background import BackgroundServer
from langchain_guardrail import ChatGuardrail, GuardrailCallbackHandler

QUESTION = {"question": "How do I keep a basil plant alive on a windowsill?"}
LENIENT = GuardConfig(threshold=1.0, tau=1)  # no score reaches 1.0: nothing is flagged
STRICT = GuardConfig(threshold=0.0, tau=1, check_prompt=True, action="stop")  # the request is cut
TOKENS = 24


@pytest.fixture(scope="module")
def sidecar_url(base_guard: Guard) -> Iterator[str]:
    """A real `guardrail serve` app on a free loopback port, serving the real default model."""
    with BackgroundServer(create_app(Settings(allow_request_relaxation=True), base_guard.model)) as server:
        yield server.url


def prompt() -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", "You are a helpful, concise gardener."),
                                             ("user", "{question}")])


def model(url: str, config: GuardConfig, **kwargs: Any) -> ChatGuardrail:
    return ChatGuardrail(guard=Guard(backend=url), config=config, max_new_tokens=TOKENS, **kwargs)


def test_invoke_and_stream_through_a_chain(sidecar_url: str) -> None:
    chain = prompt() | model(sidecar_url, LENIENT) | StrOutputParser()
    text = chain.invoke(QUESTION)
    assert text.strip()

    chunks = list(chain.stream(QUESTION))
    assert len([c for c in chunks if c]) >= 3
    assert "".join(chunks) == text  # greedy decoding: the stream is the invoked answer, piece by piece

    answer = (prompt() | model(sidecar_url, LENIENT)).invoke(QUESTION)
    assert isinstance(answer, AIMessage) and answer.text == text
    meta = answer.response_metadata["guardrail"]
    assert meta["intercepted"] is False and meta["checks"] >= 1
    assert answer.usage_metadata is not None and 0 < answer.usage_metadata["output_tokens"] <= TOKENS


def test_interception_is_marked_and_nothing_leaks(sidecar_url: str) -> None:
    handler = GuardrailCallbackHandler()
    cut = model(sidecar_url, STRICT)
    assert (prompt() | cut | StrOutputParser()).invoke(QUESTION) == ""

    answer = (prompt() | cut).invoke(QUESTION, config={"callbacks": [handler]})
    assert answer.text == ""
    meta = answer.response_metadata["guardrail"]
    assert meta["intercepted"] is True and meta["action"] == "stop" and meta["index"] == 0
    assert meta["stage"] == "input" and 0.0 <= meta["score"] <= 1.0
    assert answer.response_metadata["finish_reason"] == "content_filter"
    assert [(r.stage, r.intercepted) for r in handler.intercepts] == [("input", True)]

    chunks = list((prompt() | cut).stream(QUESTION))
    assert all(c.text == "" for c in chunks)
    assert chunks[-1].response_metadata["guardrail"]["intercepted"] is True


async def test_async_client_streams(sidecar_url: str) -> None:
    expected = (prompt() | model(sidecar_url, LENIENT) | StrOutputParser()).invoke(QUESTION)
    async with AsyncGuardrailClient(sidecar_url) as client:
        chat = ChatGuardrail(guard=client, config=LENIENT, max_new_tokens=TOKENS)
        chain = prompt() | chat | StrOutputParser()
        pieces = [piece async for piece in chain.astream(QUESTION)]
        assert "".join(pieces) == expected
        assert await chain.ainvoke(QUESTION) == expected


def test_stop_sequences_and_per_call_overrides(allow: Guard) -> None:
    chat = ChatGuardrail(guard=allow, max_new_tokens=TOKENS)  # the embedded guard, same interface
    full = chat.invoke("How do I keep a basil plant alive on a windowsill?")
    assert "," in full.text
    cut = chat.invoke("How do I keep a basil plant alive on a windowsill?", stop=[","])
    assert cut.text == full.text[: full.text.index(",")]
    short = chat.invoke("How do I keep a basil plant alive on a windowsill?", max_new_tokens=4)
    assert short.response_metadata["finish_reason"] == "length"
    assert short.usage_metadata is not None and short.usage_metadata["output_tokens"] == 4
