"""Nothing flagged is released: safe text first, then the keyword, on every LangChain surface.

The guard is the keyword model (real forward passes; a check scores 0.99 once it has read
` bomb`, else 0.01), acting on the first unsafe check with a hold-back. Each case asserts the
consumer saw exactly the text of the last safe check minus the hold-back, then the
replacement, and nothing of what followed: not in the stream, not in callbacks, not in the
final message; and that the upstream stopped.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.callbacks import BaseCallbackHandler
from scripted import SCRIPT, ScriptedChatModel, keyword_guard, keyword_model, released_before_cut, words

from guardrail.errors import GuardrailViolation
from guardrail.model.decoding import REFUSAL
from guardrail.types import GuardConfig, TokenEvent
from langchain_guardrail import ChatGuardrail, GuardrailChatModel, GuardrailRunnable

FLAGGED_AT = SCRIPT.index(" bomb")
COARSE = [SCRIPT[:41], SCRIPT[41:97], SCRIPT[97:150], SCRIPT[150:]]  # cuts inside words, too
FINE = words(SCRIPT)
CHARS = list(SCRIPT[:FLAGGED_AT + 12])
QUESTION = "Tell me a story."


class TokenRecorder(BaseCallbackHandler):
    """Every token streamed to callbacks: what a UI wired to callbacks would show."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def chunks_up_to_flag(chunks: list[str]) -> int:
    """How many chunks the upstream produces until the one whose reading flags the stream."""
    for i in range(1, len(chunks) + 1):
        if released_before_cut(chunks[:i], 0, closing=False) is not None:
            return i
    if released_before_cut(chunks, 0) is not None:  # flagged by the covering check at close
        return len(chunks)
    raise AssertionError("the keyword is never read")


def expected(chunks: list[str], hold_back: int) -> str:
    shown = released_before_cut(chunks, hold_back)
    assert shown is not None and " bomb" not in shown
    return shown


def wrapper(chunks: list[str], hold_back: int, **options: Any) -> GuardrailChatModel:
    return GuardrailChatModel(llm=ScriptedChatModel(chunks=chunks), guard=keyword_guard(hold_back=hold_back),
                              check_input=False, **options)


def assert_upstream_stopped(model: GuardrailChatModel, chunks: list[str]) -> None:
    assert isinstance(model.llm, ScriptedChatModel)
    assert len(model.llm.streamed) == chunks_up_to_flag(chunks)


@pytest.mark.parametrize("hold_back", [0, 2, 5])
@pytest.mark.parametrize("chunks", [COARSE, FINE, CHARS], ids=["coarse", "fine", "chars"])
def test_chat_model_stream(chunks: list[str], hold_back: int) -> None:
    model, recorder = wrapper(chunks, hold_back), TokenRecorder()
    out = list(model.stream(QUESTION, config={"callbacks": [recorder]}))
    shown = expected(chunks, hold_back)
    assert "".join(c.text for c in out) == shown + model.replacement
    assert "".join(recorder.tokens) == shown + model.replacement
    final = out[0]
    for chunk in out[1:]:
        final = final + chunk
    assert final.response_metadata["guardrail"]["intercepted"] is True
    assert_upstream_stopped(model, chunks)


@pytest.mark.parametrize("hold_back", [0, 2, 5])
@pytest.mark.parametrize("chunks", [COARSE, FINE], ids=["coarse", "fine"])
async def test_chat_model_astream(chunks: list[str], hold_back: int) -> None:
    model, recorder = wrapper(chunks, hold_back), TokenRecorder()
    out = [c async for c in model.astream(QUESTION, config={"callbacks": [recorder]})]
    shown = expected(chunks, hold_back)
    assert "".join(c.text for c in out) == shown + model.replacement
    assert "".join(recorder.tokens) == shown + model.replacement
    assert_upstream_stopped(model, chunks)


@pytest.mark.parametrize("chunks", [COARSE, FINE], ids=["coarse", "fine"])
async def test_chat_model_raises_with_exactly_what_was_shown(chunks: list[str]) -> None:
    for how in ("stream", "astream"):
        model, shown = wrapper(chunks, 2, on_violation="raise"), []
        with pytest.raises(GuardrailViolation) as info:
            if how == "stream":
                for chunk in model.stream(QUESTION):
                    shown.append(chunk.text)
            else:
                async for achunk in model.astream(QUESTION):
                    shown.append(achunk.text)
        assert info.value.stage == "stream"
        assert "".join(shown) == info.value.released == expected(chunks, 2)


async def test_chat_model_invoke_shows_nothing_of_a_flagged_answer() -> None:
    model = wrapper(FINE, 2)
    for answer in (model.invoke(QUESTION), await model.ainvoke(QUESTION)):
        assert answer.text == model.replacement
        assert answer.response_metadata["guardrail"]["stage"] == "output"
        assert answer.usage_metadata is not None  # the flagged answer was generated, and counts
    safe = GuardrailChatModel(llm=ScriptedChatModel(chunks=words(SCRIPT[:FLAGGED_AT])),
                              guard=keyword_guard(), check_input=False)
    assert safe.invoke(QUESTION).text == SCRIPT[:FLAGGED_AT]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, len(SCRIPT) - 1), max_size=12, unique=True),
       hold_back=st.integers(0, 6))
def test_chat_model_any_chunking(cuts: list[int], hold_back: int) -> None:
    bounds = [0, *sorted(cuts), len(SCRIPT)]
    chunks = [SCRIPT[a:b] for a, b in itertools.pairwise(bounds)]
    model = wrapper(chunks, hold_back)
    text = "".join(c.text for c in model.stream(QUESTION))
    assert text == expected(chunks, hold_back) + model.replacement


@pytest.mark.parametrize("chunks", [COARSE, FINE], ids=["coarse", "fine"])
async def test_runnable_wrapper(chunks: list[str]) -> None:
    guarded = GuardrailRunnable.wrap(ScriptedChatModel(chunks=chunks), guard=keyword_guard(hold_back=3),
                                     check_input=False, on_violation="replace")
    shown = expected(chunks, 3)
    assert "".join(c.text for c in guarded.stream(QUESTION)) == shown + guarded.replacement
    assert "".join([c.text async for c in guarded.astream(QUESTION)]) == shown + guarded.replacement
    assert guarded.invoke(QUESTION).text == guarded.replacement
    assert (await guarded.ainvoke(QUESTION)).text == guarded.replacement


@pytest.mark.parametrize("chunks", [COARSE, FINE], ids=["coarse", "fine"])
async def test_agent_middleware(chunks: list[str]) -> None:
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent

    from langchain_guardrail import GuardrailMiddleware

    request = {"messages": [{"role": "user", "content": QUESTION}]}
    middleware = GuardrailMiddleware(guard=keyword_guard(hold_back=2), check_input=False)
    agent = create_agent(ScriptedChatModel(chunks=chunks), tools=[], middleware=[middleware])
    shown = expected(chunks, 2)
    tokens = [m.text for m, _ in agent.stream(request, stream_mode="messages")]
    assert "".join(tokens) == shown + "I can't help with that."
    atokens = [m.text async for m, _ in agent.astream(request, stream_mode="messages")]
    assert atokens == tokens
    final = agent.invoke(request)["messages"][-1]
    assert final.text == "I can't help with that."
    assert (await agent.ainvoke(request))["messages"][-1].text == final.text


# -- ChatGuardrail: the guard's own generation, cut where the keyword is generated ---------------
SAMPLING = {"temperature": 1.0, "seed": 7, "max_new_tokens": 24}


def generated_tokens() -> list[str]:
    """The unguarded sample, one token per event (the guard changes no logit, so guarded
    decoding with the same seed samples the same tokens)."""
    prompt = [{"role": "user", "content": QUESTION}]  # what the chat model sends for one human turn
    events = keyword_guard().generate(prompt, guard=False, **SAMPLING)
    tokens = [e for e in events if isinstance(e, TokenEvent)]
    assert [e.index for e in tokens] == list(range(len(tokens)))
    return [e.text for e in tokens]


@pytest.mark.parametrize(("period", "hold_back"), [(1, 0), (4, 2), (3, 5)])
async def test_chat_guardrail_stops_before_the_flagged_token(period: int, hold_back: int) -> None:
    texts = generated_tokens()
    at = keyword_position(texts)
    guard = keyword_guard(hold_back=hold_back, keyword=texts[at], period=period, action="stop")
    chat = ChatGuardrail(guard=guard, **SAMPLING)
    # the last safe check covered the tokens before the one that holds the keyword
    shown = "".join(texts[: (at // period) * period - hold_back])
    assert "".join(c.text for c in chat.stream(QUESTION)) == shown
    assert "".join([c.text async for c in chat.astream(QUESTION)]) == shown
    for answer in (chat.invoke(QUESTION), await chat.ainvoke(QUESTION)):
        assert answer.text == shown
        assert answer.response_metadata["finish_reason"] == "content_filter"
        assert answer.response_metadata["guardrail"]["intercepted"] is True
    unguarded = ChatGuardrail(guard=guard, config=GuardConfig(threshold=1.0), **SAMPLING)
    assert unguarded.invoke(QUESTION).text == "".join(texts)


async def test_chat_guardrail_refuses_in_place_of_the_flagged_tokens() -> None:
    texts = generated_tokens()
    at = keyword_position(texts)
    chat = ChatGuardrail(guard=keyword_guard(hold_back=2, keyword=texts[at], period=4, action="refuse"),
                         **SAMPLING)
    shown = "".join(texts[: (at // 4) * 4 - 2])
    withheld = "".join(texts[(at // 4) * 4 - 2 : at + 1])
    for text in ("".join(c.text for c in chat.stream(QUESTION)),
                 "".join([c.text async for c in chat.astream(QUESTION)]),
                 chat.invoke(QUESTION).text, (await chat.ainvoke(QUESTION)).text):
        assert text.startswith(shown + " " + REFUSAL)  # the refusal goes where the cut is
        assert withheld not in text


def keyword_position(texts: list[str]) -> int:
    """A token, far enough in, that is one token on its own and new to the text before it."""
    tokenizer = keyword_model().tokenizer
    return next(i for i in range(8, len(texts))
                if len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]) == 1
                and texts[i].strip() and texts[i] not in "".join(texts[:i]))
