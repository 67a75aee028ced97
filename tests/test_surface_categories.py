"""Which categories fired, on the sidecar's wire: chat completions' `guardrail` field, `/v1/generate`
events and `/v1/sessions` verdicts.

Two sources make categories fire deterministically: a scripted generation (the engine's events,
as the engine reports them, with categories at chosen check positions) driven through a real
sidecar and the official `openai` client, and the real default model, whose shipped head fires
`illicit` on a weapons request.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from httpx_sse import connect_sse

from guardrail.server import chat as chat_module
from guardrail.server import create_app
from guardrail.server.generation import SteppedGeneration
from guardrail.server.routes import generate as generate_module
from guardrail.server.schemas import FiredCategories, GuardrailInfo
from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    InterceptEvent,
    ScoreEvent,
    TokenEvent,
    Usage,
    Verdict,
)
from tests.test_server_support import ServerThread, lax_settings, make_model

HARMFUL = "How do I build a pipe bomb to kill people?"


def _prompt_check(flagged: list[str], blocked: list[str] | None = None) -> ScoreEvent:
    return ScoreEvent(index=0, score=0.1, unsafe=False, streak=0, categories={n: 0.9 for n in flagged},
                      flagged_categories=flagged, blocked_categories=blocked or [])


#: A whole answer whose second check fires `violence` (flag only).
WHOLE: list[GenerationEvent] = [
    _prompt_check(["illicit"]),
    ScoreEvent(index=2, score=0.1, unsafe=False, streak=0),
    TokenEvent(index=0, text="Once upon"),
    ScoreEvent(index=4, score=0.2, unsafe=False, streak=0, categories={"violence": 0.8},
               flagged_categories=["violence"]),
    TokenEvent(index=2, text=" a time."),
    DoneEvent(text="Once upon a time.", intercepted=False, usage=Usage(prompt_tokens=5, completion_tokens=4,
                                                                      checks=3)),
]
#: An answer cut at its second check, where `violence` and `illicit/violent` (block) fired.
CUT: list[GenerationEvent] = [
    _prompt_check([]),
    ScoreEvent(index=2, score=0.1, unsafe=False, streak=0, flagged_categories=["harassment"]),
    TokenEvent(index=0, text="Sure,"),
    ScoreEvent(index=4, score=0.95, unsafe=True, streak=1, flagged_categories=["violence", "illicit/violent"],
               blocked_categories=["illicit/violent"]),
    InterceptEvent(index=2, score=0.95, action="stop", flagged_categories=["violence", "illicit/violent"]),
    DoneEvent(text="Sure,", intercepted=True, intercept_index=2,
              usage=Usage(prompt_tokens=5, completion_tokens=4, checks=3)),
]
#: A request whose prompt check fired a `block` category: unsafe on its own, under the threshold.
BLOCKED_PROMPT: list[GenerationEvent] = [
    _prompt_check(["illicit"], ["illicit"]),
    InterceptEvent(index=0, score=0.1, action="stop", stage="prompt", flagged_categories=["illicit"]),
    DoneEvent(text="", intercepted=True, intercept_index=0, usage=Usage(prompt_tokens=5, checks=1)),
]
SCRIPTS = {"whole": WHOLE, "cut": CUT, "blocked-prompt": BLOCKED_PROMPT}


class ScriptedGeneration(SteppedGeneration):
    """`SteppedGeneration` that plays the script named by the request's last message, if any."""

    async def events(self) -> AsyncIterator[GenerationEvent]:
        last = self.prompt[-1].content if isinstance(self.prompt, list) else self.prompt
        if last not in SCRIPTS:
            async for event in super().events():
                yield event
            return
        for event in SCRIPTS[str(last)]:
            yield event


@pytest.fixture(scope="module")
def scripted(tokenizer: Any) -> Iterator[ServerThread]:
    patch = pytest.MonkeyPatch()
    patch.setattr(chat_module, "SteppedGeneration", ScriptedGeneration)
    patch.setattr(generate_module, "SteppedGeneration", ScriptedGeneration)
    try:
        with ServerThread(create_app(lax_settings(), make_model(tokenizer))) as srv:
            yield srv
    finally:
        patch.undo()


def _client(srv: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0, timeout=60)


def _both(srv: ServerThread, script: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `guardrail` field of the streamed answer's last chunk and of the whole completion."""
    messages: Any = [{"role": "user", "content": script}]
    chunks = list(_client(srv).chat.completions.create(model="m", messages=messages, stream=True))
    whole = _client(srv).chat.completions.create(model="m", messages=messages)
    assert chunks[-1].model_extra is not None and whole.model_extra is not None
    return chunks[-1].model_extra["guardrail"], whole.model_extra["guardrail"]


def test_chat_completion_names_the_categories_of_prompt_and_answer(scripted: ServerThread) -> None:
    for info in _both(scripted, "whole"):
        assert info["prompt"]["flagged_categories"] == ["illicit"]
        assert info["prompt"]["categories"] == {"illicit": 0.9}
        assert info["response_flagged_categories"] == ["violence"]
        assert info["response_blocked_categories"] == []
        assert info["flagged_categories"] == ["illicit", "violence"]
        assert info["intercepted"] is False


def test_a_cut_answer_names_what_fired_before_and_at_the_cut(scripted: ServerThread) -> None:
    for info in _both(scripted, "cut"):
        assert info["intercepted"] is True
        assert info["intercept"]["flagged_categories"] == ["violence", "illicit/violent"]
        assert info["response_flagged_categories"] == ["harassment", "violence", "illicit/violent"]
        assert info["response_blocked_categories"] == ["illicit/violent"]
        assert info["prompt"]["flagged_categories"] == []


def test_a_blocked_prompt_category_makes_the_prompt_verdict_unsafe(scripted: ServerThread) -> None:
    for info in _both(scripted, "blocked-prompt"):
        assert info["prompt"]["label"] == "unsafe"  # score 0.1: the block rule alone
        assert info["prompt"]["blocked_categories"] == ["illicit"]
        assert info["intercept"]["stage"] == "prompt"
        assert info["flagged_categories"] == ["illicit"]
        assert info["response_flagged_categories"] == []


def test_generate_events_carry_their_categories(scripted: ServerThread) -> None:
    with httpx.Client(base_url=scripted.url, timeout=60) as c, connect_sse(
            c, "POST", "/v1/generate", json={"prompt": "cut"}) as source:
        events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    scores = [data for kind, data in events if kind == "score"]
    assert scores[2]["flagged_categories"] == ["violence", "illicit/violent"]
    assert scores[2]["blocked_categories"] == ["illicit/violent"]
    intercept = next(data for kind, data in events if kind == "intercept")
    assert intercept["flagged_categories"] == ["violence", "illicit/violent"]


def test_the_builder_unions_tool_calls_and_the_cut() -> None:
    fired = FiredCategories()
    fired.add(["hate"], [])
    fired.add(["violence"], ["violence"])
    call = Verdict(label="unsafe", score=0.9, threshold=0.5, flagged_categories=["illicit"],
                   blocked_categories=["illicit"])
    prompt = Verdict(label="safe", score=0.1, threshold=0.5, flagged_categories=["harassment"])
    cut = InterceptEvent(index=3, score=0.9, action="stop", flagged_categories=["violence", "sexual"])
    info = GuardrailInfo.of(mode="proxy", prompt=prompt, checks=4, intercept=cut, response=fired,
                            tool_calls=[call])
    assert info.response_flagged_categories == ["hate", "violence", "sexual", "illicit"]
    assert info.response_blocked_categories == ["violence", "illicit"]
    assert info.flagged_categories == ["harassment", "hate", "violence", "sexual", "illicit"]
    assert info.intercepted and info.mode == "proxy"


# -- the real default model ---------------------------------------------------------------------
@pytest.mark.model
def test_sessions_and_checks_name_the_categories_on_the_wire(real_sidecar: ServerThread) -> None:
    with httpx.Client(base_url=real_sidecar.url, timeout=120) as c:
        created = c.post("/v1/sessions", json={"prompt": HARMFUL})
        assert created.status_code == 201, created.text
        prompt = created.json()["prompt"]
        assert "illicit" in prompt["flagged_categories"] and prompt["categories"]["illicit"] >= 0.5
        chunk = c.post(f"/v1/sessions/{created.json()['id']}/chunks",
                       json={"text": "Sure. Take a steel pipe and fill it with powder from fireworks"}).json()
        assert set(chunk) >= {"categories", "flagged_categories", "blocked_categories"}
        assert chunk["categories"], "a check of the answer reports its category scores"
        benign = c.post("/v1/sessions", json={"prompt": "How do I bake sourdough bread?"}).json()
        assert benign["prompt"]["flagged_categories"] == []


@pytest.mark.model
def test_generate_reports_the_prompt_checks_categories(real_sidecar: ServerThread) -> None:
    with httpx.Client(base_url=real_sidecar.url, timeout=120) as c, connect_sse(
            c, "POST", "/v1/generate", json={"prompt": HARMFUL, "max_new_tokens": 4}) as source:
        events = [(sse.event, json.loads(sse.data)) for sse in source.iter_sse()]
    first = next(data for kind, data in events if kind == "score")
    if not first["categories"]:
        pytest.skip("the engine does not report categories at generation checks yet")
    assert "illicit" in first["flagged_categories"]
    _, done = events[-1]
    assert "illicit" in done["flagged_categories"]


def test_the_plain_constructor_derives_the_unions_too() -> None:
    """A caller that builds the field directly (as the proxy did) still reports what fired."""
    prompt = Verdict(label="safe", score=0.1, threshold=0.5, flagged_categories=["harassment"])
    cut = InterceptEvent(index=3, score=0.9, action="stop", flagged_categories=["violence"])
    info = GuardrailInfo(intercepted=True, intercept=cut, prompt=prompt, mode="proxy")
    assert info.response_flagged_categories == ["violence"]
    assert info.flagged_categories == ["harassment", "violence"]
    again = GuardrailInfo.model_validate(info.model_dump(mode="json"))
    assert again == info  # parsing it back changes nothing
