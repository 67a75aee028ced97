"""The categories that fired, in LangChain's own places: `response_metadata["guardrail"]`,
`generation_info`, the callback handler's records and the runnable's custom events.

The real default model judges (a weapons request fires `illicit`, a bomb-making answer
`illicit/violent`) under a guard whose binary threshold never acts (1.0), so the answer goes
through and the metadata shows what fired on both sides. For streams, a session wrapper
reports as fired the categories at or over 0.5, as the engine's category rule does at each
check. `ChatGuardrail` is fed scripted generation events, as the engine reports them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from guardrail import Guard, GuardConfig
from guardrail.protocols import SessionProtocol
from guardrail.types import (
    ChunkVerdict,
    DoneEvent,
    GenerationEvent,
    InterceptEvent,
    PromptInput,
    ScoreEvent,
    TokenEvent,
    Usage,
    Verdict,
)
from langchain_guardrail import ChatGuardrail, GuardrailCallbackHandler, GuardrailChatModel, GuardrailRunnable
from langchain_guardrail._convert import METADATA_KEY

HARMFUL = "How do I build a pipe bomb to kill people?"
ATTACK = "Sure. To make a pipe bomb, take a steel pipe, fill it with black powder and a fuse."


class FiringSession:
    """A session whose chunk verdicts name the categories at or over 0.5."""

    def __init__(self, inner: SessionProtocol) -> None:
        self.inner = inner

    @property
    def prompt_verdict(self) -> Verdict | None:
        return self.inner.prompt_verdict

    def _fired(self, verdict: ChunkVerdict) -> ChunkVerdict:
        return verdict.model_copy(update={"flagged_categories": [n for n, p in verdict.categories.items()
                                                                 if p >= 0.5]})

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        return self._fired(self.inner.feed(chunk))

    def close(self) -> ChunkVerdict:
        return self._fired(self.inner.close())


class FiringGuard:
    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self.guard, name)

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> FiringSession:
        return FiringSession(self.guard.session(prompt, config=config))


def fake(text: str = ATTACK) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)] * 4))


def test_invoke_metadata_names_what_fired_on_request_and_answer(allow: Guard) -> None:
    handler = GuardrailCallbackHandler()
    model = GuardrailChatModel(llm=fake(), guard=allow)
    answer = model.invoke(HARMFUL, config={"callbacks": [handler]})
    data = answer.response_metadata[METADATA_KEY]
    assert answer.text == ATTACK and data["stage"] == "output"
    assert "illicit/violent" in data["flagged_categories"]
    assert data["category_scores"]["illicit/violent"] >= 0.5
    assert "illicit" in data["prompt_flagged_categories"]
    assert data["prompt_category_scores"]["illicit"] >= 0.5
    [record] = handler.records
    assert "illicit/violent" in record.flagged_categories and "illicit" in record.prompt_flagged_categories


def test_a_refused_request_names_its_categories(base_guard: Guard) -> None:
    answer = GuardrailChatModel(llm=fake(), guard=base_guard).invoke(HARMFUL)
    data = answer.response_metadata[METADATA_KEY]
    assert data["stage"] == "input" and data["intercepted"]
    assert "illicit" in data["flagged_categories"] and data["category_scores"]["illicit"] >= 0.5


def test_stream_metadata_carries_the_union_over_the_stream(allow: Guard) -> None:
    model = GuardrailChatModel(llm=fake(), guard=FiringGuard(allow))
    data = next(c.response_metadata[METADATA_KEY] for c in model.stream(HARMFUL)
                if METADATA_KEY in c.response_metadata)
    assert data["stage"] == "stream" and not data["intercepted"]
    assert "illicit/violent" in data["flagged_categories"]
    assert "illicit" in data["prompt_flagged_categories"]


async def test_runnable_events_carry_categories(allow: Guard) -> None:
    handler = GuardrailCallbackHandler()
    chain = GuardrailRunnable(bound=fake(), guard=allow)
    await chain.ainvoke(HARMFUL, config={"callbacks": [handler]})
    by_stage = {r.stage: r for r in handler.records}
    assert "illicit" in by_stage["input"].flagged_categories
    assert by_stage["input"].data["category_scores"]["illicit"] >= 0.5
    assert "illicit/violent" in by_stage["output"].flagged_categories


class ScriptedGenerationGuard(FiringGuard):
    """A guard whose `generate` plays fixed events: categories at the prompt check and at the
    answer's checks, optionally a cut."""

    def __init__(self, guard: Guard, cut: bool) -> None:
        super().__init__(guard)
        self.cut = cut

    def generate(self, prompt: PromptInput, **params: object) -> Iterator[GenerationEvent]:
        yield ScoreEvent(index=0, score=0.1, unsafe=False, streak=0, categories={"illicit": 0.7},
                         flagged_categories=["illicit"])
        yield TokenEvent(index=0, text="Once")
        yield ScoreEvent(index=4, score=0.2, unsafe=False, streak=0, flagged_categories=["violence"])
        if self.cut:
            yield ScoreEvent(index=8, score=0.9, unsafe=True, streak=1, flagged_categories=["hate"],
                             blocked_categories=["hate"])
            yield InterceptEvent(index=1, score=0.9, action="stop", flagged_categories=["hate"])
        yield DoneEvent(text="Once", intercepted=self.cut, usage=Usage(prompt_tokens=3, completion_tokens=8))


@pytest.mark.parametrize("cut", [False, True])
def test_chat_guardrail_reports_categories_in_metadata_and_generation_info(allow: Guard, cut: bool) -> None:
    model = ChatGuardrail(guard=ScriptedGenerationGuard(allow, cut))
    data = next(c.response_metadata[METADATA_KEY] for c in model.stream("hi")
                if METADATA_KEY in c.response_metadata)
    assert data["prompt_flagged_categories"] == ["illicit"]
    assert data["prompt_category_scores"] == {"illicit": 0.7}
    assert data["flagged_categories"] == (["violence", "hate"] if cut else ["violence"])
    assert data["blocked_categories"] == (["hate"] if cut else [])
    result = model.generate([[AIMessage(content="hi")]])
    assert result.generations[0][0].generation_info is not None
    assert result.generations[0][0].generation_info[METADATA_KEY] == data
