"""`GuardrailChatModel`: token-by-token interception around fake chat models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import BaseChatModel, FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from guardrail import Guard
from guardrail.errors import GuardrailViolation
from guardrail.streaming import DEFAULT_REPLACEMENT
from langchain_guardrail import GuardrailCallbackHandler, GuardrailChatModel

ANSWER = "Sure, here is the whole plan, step by step."


def fake(text: str = ANSWER) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)] * 4))


class TokenRecorder(BaseCallbackHandler):
    """Collects every token streamed to callbacks: what a UI wired to callbacks would show."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def test_safe_stream_passes_token_by_token(allow: Guard) -> None:
    model = GuardrailChatModel(llm=fake(), guard=allow)
    chunks = list(model.stream("How do I plan a trip?"))
    assert "".join(c.text for c in chunks) == ANSWER
    # released progressively at the scheduled checks (every 4th token), not all at the end
    assert len([c for c in chunks if c.text]) >= 3
    final = chunks[0]
    for c in chunks[1:]:
        final = final + c
    assert final.response_metadata["guardrail"]["intercepted"] is False


def test_unsafe_stream_is_cut_and_never_reaches_callbacks(flag: Guard) -> None:
    recorder = TokenRecorder()
    handler = GuardrailCallbackHandler()
    model = GuardrailChatModel(llm=fake(), guard=flag, check_input=False)
    chunks = list(model.stream("q", config={"callbacks": [recorder, handler]}))
    text = "".join(c.text for c in chunks)
    assert text == DEFAULT_REPLACEMENT
    assert "plan" not in "".join(recorder.tokens)
    assert [r.stage for r in handler.intercepts] == ["stream"]


def test_invoke_checks_the_whole_answer(allow: Guard, flag: Guard) -> None:
    handler = GuardrailCallbackHandler()
    out = GuardrailChatModel(llm=fake(), guard=allow).invoke("q", config={"callbacks": [handler]})
    assert out.content == ANSWER and out.response_metadata["guardrail"]["label"] == "safe"
    assert [r.stage for r in handler.records] == ["output"]
    refused = GuardrailChatModel(llm=fake(), guard=flag).invoke("q")
    assert refused.content == DEFAULT_REPLACEMENT
    assert refused.response_metadata["guardrail"]["stage"] == "input"
    with pytest.raises(GuardrailViolation):
        GuardrailChatModel(llm=fake(), guard=flag, on_violation="raise", check_input=False).invoke("q")


def test_character_streams_coalesce(allow: Guard) -> None:
    inner = FakeListChatModel(responses=["Bake bread at home."])
    model = GuardrailChatModel(llm=inner, guard=allow, chunk_chars=8)
    assert "".join(c.text for c in model.stream("q")) == "Bake bread at home."


class ToolCallingFake(BaseChatModel):
    """Streams some text and then a tool call, like a provider model would."""

    @property
    def _llm_type(self) -> str:
        return "tool-calling-fake"

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                  **kwargs: Any) -> ChatResult:
        raise NotImplementedError

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None, run_manager: Any = None,
                **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for word in ["Let", " me", " look", " that", " up."]:
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[
            {"name": "search", "args": '{"q": "bread"}', "id": "call_1", "index": 0}]))

    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self.bind(tools=tools, **kwargs)


def test_tool_calls_are_held_until_the_answer_is_cleared(allow: Guard, flag: Guard) -> None:
    model = GuardrailChatModel(llm=ToolCallingFake(), guard=allow)
    chunks = list(model.stream("find bread recipes"))
    tool_positions = [i for i, c in enumerate(chunks) if c.tool_call_chunks]
    assert tool_positions and all(not c.text for c in chunks[tool_positions[0]:])
    merged = chunks[0]
    for c in chunks[1:]:
        merged = merged + c
    assert merged.tool_calls[0]["name"] == "search"
    assert merged.text == "Let me look that up."

    cut = list(GuardrailChatModel(llm=ToolCallingFake(), guard=flag, check_input=False).stream("q"))
    assert not any(c.tool_call_chunks for c in cut)

    bound = GuardrailChatModel(llm=ToolCallingFake(), guard=allow).bind_tools([{"name": "search"}])
    assert isinstance(bound, GuardrailChatModel)


async def test_async_stream_and_invoke(allow: Guard, flag: Guard) -> None:
    model = GuardrailChatModel(llm=fake(), guard=allow)
    assert "".join([c.text async for c in model.astream("q")]) == ANSWER
    assert (await model.ainvoke("q")).content == ANSWER
    cut = GuardrailChatModel(llm=fake(), guard=flag, check_input=False)
    assert "".join([c.text async for c in cut.astream("q")]) == DEFAULT_REPLACEMENT
