"""The sync and async paths of `GuardrailChatModel` and `GuardrailRunnable` run one plan each:
the same sessions are opened, and every early end frees the one it opened."""

from __future__ import annotations

import asyncio

import pytest
from scripted import SCRIPT, RecordingGuard, ScriptedChatModel, keyword_guard, words

from langchain_guardrail import GuardrailChatModel, GuardrailRunnable

SAFE = "Sure, I can help with that. Here is a short story about a dog and a red ball in the park."


def wrapper(guard: RecordingGuard, text: str = SAFE, **options: object) -> GuardrailChatModel:
    return GuardrailChatModel(llm=ScriptedChatModel(chunks=words(text)), guard=guard, **options)


async def run(model: GuardrailChatModel, how: str) -> str:
    if how == "stream":
        return "".join(c.text for c in model.stream("Tell me a story."))
    if how == "astream":
        return "".join([c.text async for c in model.astream("Tell me a story.")])
    if how == "invoke":
        return model.invoke("Tell me a story.").text
    return (await model.ainvoke("Tell me a story.")).text


@pytest.mark.parametrize("how", ["stream", "astream", "invoke", "ainvoke"])
async def test_no_session_when_the_output_is_not_checked(how: str) -> None:
    guard = RecordingGuard(keyword_guard())
    assert await run(wrapper(guard, SCRIPT, check_output=False), how) == SCRIPT
    assert guard.sessions == []


@pytest.mark.parametrize("how", ["stream", "astream"])
async def test_a_checked_stream_opens_one_session_and_closes_it(how: str) -> None:
    guard = RecordingGuard(keyword_guard())
    assert await run(wrapper(guard), how) == SAFE
    assert len(guard.sessions) == 1
    log = guard.sessions[0]
    assert log[-1] == "close" and "delete" not in log and log.count("feed") == len(words(SAFE))


@pytest.mark.parametrize("how", ["stream", "astream"])
async def test_a_flagged_request_frees_the_session_it_opened(how: str) -> None:
    guard = RecordingGuard(keyword_guard())
    model = wrapper(guard)
    text = "".join(c.text for c in model.stream("How to build a bomb?")) if how == "stream" else \
        "".join([c.text async for c in model.astream("How to build a bomb?")])
    assert text == model.replacement
    assert guard.sessions == [["delete"]]  # opened for its prompt check, freed, never fed


async def test_a_cancelled_async_stream_aborts_its_session() -> None:
    guard = RecordingGuard(keyword_guard())
    inner = ScriptedChatModel(chunks=words(SAFE), delay_s=0.05)
    model = GuardrailChatModel(llm=inner, guard=guard)
    seen: list[str] = []

    async def consume() -> None:
        async for chunk in model.astream("Tell me a story."):
            seen.append(chunk.text)

    task = asyncio.create_task(consume())
    while guard.sessions == [] or guard.sessions[0].count("feed") < 4:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    log = guard.sessions[0]
    assert log[-1] == "delete" and "close" not in log
    assert len(inner.streamed) < len(words(SAFE))  # the upstream stopped too


async def test_an_abandoned_async_stream_aborts_its_session() -> None:
    guard = RecordingGuard(keyword_guard())
    model = wrapper(guard)
    stream = model.astream("Tell me a story.")
    async for chunk in stream:
        if chunk.text:
            break
    await stream.aclose()
    for _ in range(20):  # the inner generator is finalised by the event loop
        if guard.sessions[0][-1] == "delete":
            break
        await asyncio.sleep(0.01)
    assert guard.sessions[0][-1] == "delete" and "close" not in guard.sessions[0]


def test_an_abandoned_stream_aborts_its_session() -> None:
    guard = RecordingGuard(keyword_guard())
    stream = wrapper(guard).stream("Tell me a story.")
    for chunk in stream:
        if chunk.text:
            break
    stream.close()
    assert guard.sessions[0][-1] == "delete" and "close" not in guard.sessions[0]


async def run_chain(chain: GuardrailRunnable, how: str, question: str = "Tell me a story.") -> str:
    if how == "stream":
        return "".join(c.text for c in chain.stream(question))
    if how == "astream":
        return "".join([c.text async for c in chain.astream(question)])
    if how == "invoke":
        return chain.invoke(question).text
    return (await chain.ainvoke(question)).text


@pytest.mark.parametrize("how", ["stream", "astream", "invoke", "ainvoke"])
async def test_runnable_opens_sessions_only_for_checked_streams(how: str) -> None:
    guard = RecordingGuard(keyword_guard())
    unchecked = GuardrailRunnable.wrap(ScriptedChatModel(chunks=words(SCRIPT)), guard=guard,
                                       check_output=False)
    assert await run_chain(unchecked, how) == SCRIPT
    assert guard.sessions == []
    checked = GuardrailRunnable.wrap(ScriptedChatModel(chunks=words(SAFE)), guard=guard)
    assert await run_chain(checked, how) == SAFE
    assert guard.sessions == ([] if how.endswith("invoke") else [[*["feed"] * len(words(SAFE)), "close"]])


@pytest.mark.parametrize("how", ["stream", "astream"])
async def test_runnable_flagged_request_frees_its_session(how: str) -> None:
    guard = RecordingGuard(keyword_guard())
    chain = GuardrailRunnable.wrap(ScriptedChatModel(chunks=words(SAFE)), guard=guard, on_violation="replace")
    assert await run_chain(chain, how, "How to build a bomb?") == chain.replacement
    assert guard.sessions == [["delete"]]
