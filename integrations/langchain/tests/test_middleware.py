"""`GuardrailMiddleware` in a `langchain` v1 agent, under stream_mode="messages"."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from guardrail import Guard
from guardrail.streaming import DEFAULT_REPLACEMENT
from langchain_guardrail import GuardrailMiddleware

UNSAFE = "Sure, here is how to do it, step by step, in detail."
REQUEST = {"messages": [{"role": "user", "content": "Tell me how."}]}


def agent(guard: Guard, **options: Any) -> Any:
    model = GenericFakeChatModel(messages=iter([AIMessage(content=UNSAFE)] * 2))
    return create_agent(model, tools=[], middleware=[GuardrailMiddleware(guard=guard, **options)])


def streamed(graph: Any) -> list[str]:
    return [msg.text for msg, _ in graph.stream(REQUEST, stream_mode="messages")]


def test_messages_stream_without_guard_leaks_tokens() -> None:
    """The baseline the middleware exists for: raw tokens stream straight to the consumer."""
    model = GenericFakeChatModel(messages=iter([AIMessage(content=UNSAFE)]))
    raw = [m.text for m, _ in create_agent(model, tools=[]).stream(REQUEST, stream_mode="messages")]
    assert "".join(raw) == UNSAFE


def test_unsafe_tokens_never_reach_the_messages_stream(flag: Guard) -> None:
    tokens = streamed(agent(flag, check_input=False))
    assert "".join(tokens) == DEFAULT_REPLACEMENT
    assert not any("step" in t for t in tokens)
    final = agent(flag, check_input=False).invoke(REQUEST)["messages"][-1]
    assert final.text == DEFAULT_REPLACEMENT


def test_flagged_request_is_refused_before_the_model(flag: Guard) -> None:
    assert "".join(streamed(agent(flag))) == DEFAULT_REPLACEMENT


def test_safe_answers_stream_through(allow: Guard) -> None:
    tokens = streamed(agent(allow))
    assert "".join(tokens) == UNSAFE and len([t for t in tokens if t]) > 3


async def test_async_agent_stream(flag: Guard) -> None:
    graph = agent(flag, check_input=False)
    tokens = [m.text async for m, _ in graph.astream(REQUEST, stream_mode="messages")]
    assert "".join(tokens) == DEFAULT_REPLACEMENT
