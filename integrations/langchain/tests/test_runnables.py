"""`GuardrailRunnable` as a wrapper and in a pipe, for invoke/batch/stream and async."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableGenerator, RunnableLambda

from guardrail import Guard
from guardrail.errors import GuardrailViolation
from guardrail.streaming import DEFAULT_REPLACEMENT
from langchain_guardrail import PROMPT_METADATA_KEY, GuardrailCallbackHandler, GuardrailRunnable

ANSWER = "Mix flour and water, knead, let it rise, then bake."
PROMPT = ChatPromptTemplate.from_messages([("system", "You are a baker."), ("user", "{question}")])


def fake_model(text: str = ANSWER) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)] * 4))


def text_chain(text: str = ANSWER) -> Any:
    return PROMPT | fake_model(text) | StrOutputParser()


def test_wrap_invoke_and_batch_pass_safe_answers(allow: Guard) -> None:
    handler = GuardrailCallbackHandler()
    chain = GuardrailRunnable.wrap(text_chain(), guard=allow)
    assert chain.invoke({"question": "How do I bake bread?"}, config={"callbacks": [handler]}) == ANSWER
    assert [r.stage for r in handler.records] == ["input", "output"]
    assert not handler.flagged
    assert chain.batch([{"question": "a"}, {"question": "b"}]) == [ANSWER, ANSWER]


def test_flagged_input_stops_the_chain_before_it_runs(flag: Guard) -> None:
    ran: list[Any] = []
    chain = GuardrailRunnable.wrap(RunnableLambda(lambda x: ran.append(x) or "out"), guard=flag)
    with pytest.raises(GuardrailViolation) as info:
        chain.invoke("anything")
    assert info.value.stage == "input"
    assert list(GuardrailRunnable.wrap(RunnableLambda(lambda x: ran.append(x) or "out"), guard=flag,
                                       on_violation="replace").stream("anything")) == [DEFAULT_REPLACEMENT]
    assert ran == []


def test_flagged_output_is_replaced_in_the_output_shape(flag: Guard) -> None:
    as_text = GuardrailRunnable.wrap(text_chain(), guard=flag, check_input=False, on_violation="replace")
    assert as_text.invoke({"question": "q"}) == DEFAULT_REPLACEMENT
    as_message = GuardrailRunnable.wrap(PROMPT | fake_model(), guard=flag, check_input=False,
                                        on_violation="replace")
    out = as_message.invoke({"question": "q"})
    assert isinstance(out, AIMessage) and out.content == DEFAULT_REPLACEMENT


def test_wrap_stream_moderates_mid_stream(allow: Guard, flag: Guard) -> None:
    pieces = list(GuardrailRunnable.wrap(text_chain(), guard=allow).stream({"question": "q"}))
    assert "".join(pieces) == ANSWER and len(pieces) > 1

    handler = GuardrailCallbackHandler()
    cut = GuardrailRunnable.wrap(text_chain(), guard=flag, check_input=False, on_violation="replace")
    assert list(cut.stream({"question": "q"}, config={"callbacks": [handler]})) == [DEFAULT_REPLACEMENT]
    assert [r.stage for r in handler.intercepts] == ["stream"]

    messages = list(GuardrailRunnable.wrap(PROMPT | fake_model(), guard=flag, check_input=False,
                                           on_violation="replace").stream({"question": "q"}))
    assert [type(m) for m in messages] == [AIMessageChunk] and messages[0].content == DEFAULT_REPLACEMENT

    with pytest.raises(GuardrailViolation) as info:
        list(GuardrailRunnable.wrap(text_chain(), guard=flag, check_input=False).stream({"question": "q"}))
    assert info.value.stage == "stream"


def test_pipe_output_stage_moderates_the_piped_stream(allow: Guard, flag: Guard) -> None:
    def upstream(_: Iterator[Any]) -> Iterator[str]:
        for word in ANSWER.split(" "):
            yield word + " "

    safe = RunnableLambda(lambda x: x) | RunnableGenerator(upstream) | GuardrailRunnable(guard=allow)
    assert "".join(safe.stream("q")) == ANSWER + " "
    cut = RunnableLambda(lambda x: x) | RunnableGenerator(upstream) | GuardrailRunnable(
        guard=flag, on_violation="replace")
    assert list(cut.stream("q")) == [DEFAULT_REPLACEMENT]

    chain = text_chain() | GuardrailRunnable(guard=allow)
    assert chain.invoke({"question": "q"}, config={"metadata": {PROMPT_METADATA_KEY: "q"}}) == ANSWER


def test_pipe_input_stage_checks_and_passes_through(allow: Guard, flag: Guard) -> None:
    chain = GuardrailRunnable(stage="input", guard=allow) | text_chain()
    assert chain.invoke({"question": "How do I bake bread?"}) == ANSWER
    assert "".join(chain.stream({"question": "How do I bake bread?"})) == ANSWER
    with pytest.raises(GuardrailViolation):
        (GuardrailRunnable(stage="input", guard=flag) | text_chain()).invoke({"question": "q"})


async def test_async_invoke_and_stream(allow: Guard, flag: Guard) -> None:
    chain = GuardrailRunnable.wrap(text_chain(), guard=allow)
    assert await chain.ainvoke({"question": "q"}) == ANSWER
    assert "".join([c async for c in chain.astream({"question": "q"})]) == ANSWER
    assert await chain.abatch([{"question": "q"}]) == [ANSWER]

    handler = GuardrailCallbackHandler()
    cut = GuardrailRunnable.wrap(text_chain(), guard=flag, check_input=False, on_violation="replace")
    out = [c async for c in cut.astream({"question": "q"}, config={"callbacks": [handler]})]
    assert out == [DEFAULT_REPLACEMENT]
    assert handler.intercepts
    with pytest.raises(GuardrailViolation):
        await GuardrailRunnable.wrap(text_chain(), guard=flag).ainvoke({"question": "q"})
