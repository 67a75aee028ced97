"""The guard seam: any sync or async guard protocol implementation, and nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from scripted import (
    SCRIPT,
    AsyncRecordingGuard,
    RecordingGuard,
    ScriptedChatModel,
    keyword_guard,
    released_before_cut,
    words,
)

from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from langchain_guardrail import ChatGuardrail, GuardrailChatModel, GuardrailRunnable


def test_guards_are_checked_against_the_protocols() -> None:
    assert isinstance(RecordingGuard(keyword_guard()), GuardProtocol)
    assert isinstance(AsyncRecordingGuard(keyword_guard()), AsyncGuardProtocol)
    for make in (lambda: GuardrailChatModel(llm=ScriptedChatModel(), guard="a guard"),
                 lambda: GuardrailRunnable(guard=object()), lambda: ChatGuardrail(guard=42)):
        with pytest.raises(ValidationError, match="GuardProtocol"):
            make()


def test_sync_calls_refuse_an_async_guard() -> None:
    guard = AsyncRecordingGuard(keyword_guard())
    for call in (lambda: GuardrailChatModel(llm=ScriptedChatModel(), guard=guard).invoke("hi"),
                 lambda: list(GuardrailRunnable.wrap(ScriptedChatModel(), guard=guard).stream("hi")),
                 lambda: ChatGuardrail(guard=guard, max_new_tokens=4).invoke("hi")):
        with pytest.raises(TypeError, match="async guard"):
            call()
    assert guard.sessions == []


async def test_async_guard_moderates_like_the_sync_one() -> None:
    chunks = words(SCRIPT)
    shown = released_before_cut(chunks, 2)
    assert shown
    guard = AsyncRecordingGuard(keyword_guard(hold_back=2))
    model = GuardrailChatModel(llm=ScriptedChatModel(chunks=chunks), guard=guard, check_input=False)
    assert "".join([c.text async for c in model.astream("Tell me a story.")]) == shown + model.replacement
    assert (await model.ainvoke("Tell me a story.")).text == model.replacement
    chain = GuardrailRunnable.wrap(ScriptedChatModel(chunks=chunks), guard=guard, check_input=False,
                                   on_violation="replace")
    assert "".join([c.text async for c in chain.astream("Tell me a story.")]) == shown + chain.replacement
    assert [log[-1] for log in guard.sessions] == ["feed", "feed"]  # cut: nothing more read or released


async def test_chat_guardrail_over_an_async_guard() -> None:
    sync_chat = ChatGuardrail(guard=keyword_guard(), max_new_tokens=12, temperature=1.0, seed=3)
    async_chat = ChatGuardrail(guard=AsyncRecordingGuard(keyword_guard()), max_new_tokens=12, temperature=1.0,
                               seed=3)
    expected = sync_chat.invoke("Tell me a story.")
    answer = await async_chat.ainvoke("Tell me a story.")
    assert answer.text == expected.text and answer.usage_metadata == expected.usage_metadata
    assert "".join([c.text async for c in async_chat.astream("Tell me a story.")]) == expected.text
