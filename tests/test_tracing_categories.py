"""`guardrail.categories` on spans: moderations, session chunks and sessions, generations.

A scripted guard gives verdicts and events that carry known category names (and text that must
never reach a span), so each span's attribute is checked exactly, sync and async; one test runs
the real default model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guardrail.moderation import ModerationInput, ModerationResponse, moderation_response, moderation_texts
from guardrail.stream.bridge import ThreadedGuard
from guardrail.tracing import AsyncInstrumentedGuard, InstrumentedGuard, instrument
from guardrail.types import (
    ChunkVerdict,
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    PromptInput,
    ScoreEvent,
    TokenEvent,
    Verdict,
)

SECRET = "secret-user-text"


def _verdict(text: str) -> Verdict:
    bad = "bomb" in text
    return Verdict(label="unsafe" if bad else "safe", score=0.9 if bad else 0.1, threshold=0.5,
                   categories={"illicit/violent": 0.8 if bad else 0.0, "violence": 0.6 if bad else 0.0},
                   flagged_categories=["illicit/violent", "violence"] if bad else [])


class ScriptedSession:
    """First chunk: safe but `violence` flagged; second: cut with `illicit/violent`."""

    def __init__(self) -> None:
        self.prompt_verdict: Verdict | None = _verdict(SECRET)
        self.fed = 0

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        self.fed += 1
        if self.fed == 1:
            return ChunkVerdict(label="safe", score=0.2, threshold=0.5, released=SECRET,
                                flagged_categories=["violence"])
        return ChunkVerdict(label="unsafe", score=0.9, threshold=0.5, released="", intercepted=True,
                            intercept_index=3, flagged_categories=["illicit/violent", "violence"])

    def close(self) -> ChunkVerdict:
        return ChunkVerdict(label="safe", score=0.1, threshold=0.5, released=SECRET)


class ScriptedGuard:
    """A `GuardProtocol` whose answers carry known category names next to secret text."""

    model_name = "scripted"

    def check_prompt(self, prompt: PromptInput) -> Verdict:
        return _verdict(str(prompt))

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        return _verdict(response)

    def check_prompts(self, prompts: Any) -> list[Verdict]:
        return [_verdict(str(p)) for p in prompts]

    def check_responses(self, pairs: Any) -> list[Verdict]:
        return [_verdict(r) for _, r in pairs]

    def moderations(self, input: ModerationInput, *, config: GuardConfig | None = None) -> ModerationResponse:
        return moderation_response([_verdict(t) for t in moderation_texts(input)], "scripted")

    def generate(self, prompt: PromptInput, **kwargs: Any) -> Iterator[GenerationEvent]:
        yield TokenEvent(index=0, text=SECRET)
        yield ScoreEvent(index=4, score=0.9, unsafe=True, streak=1, flagged_categories=["self-harm"])
        yield InterceptEvent(index=4, score=0.9, action="refuse", flagged_categories=["self-harm"])
        yield DoneEvent(text=SECRET, intercepted=True, intercept_index=4,
                        flagged_categories=["self-harm", "violence"])

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        raise NotImplementedError

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> ScriptedSession:
        return ScriptedSession()

    def close(self) -> None:
        pass


Exporter = tuple[TracerProvider, InMemorySpanExporter]


@pytest.fixture()
def exporter() -> Iterator[Exporter]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield provider, spans
    provider.shutdown()


def _by_operation(spans: InMemorySpanExporter) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for span in spans.get_finished_spans():
        attrs = dict(span.attributes or {})
        found.setdefault(str(attrs["gen_ai.operation.name"]), []).append(attrs)
        assert not any(SECRET in str(value) for value in attrs.values()), attrs  # names, never text
        for event in span.events:
            assert not any(SECRET in str(value) for value in (event.attributes or {}).values())
    return found


def _assert_categories(spans: InMemorySpanExporter) -> None:
    ops = _by_operation(spans)
    (moderated,) = ops["guardrail.moderations"]
    assert moderated["guardrail.categories"] == ("illicit/violent", "violence")
    assert (moderated["guardrail.batch_size"], moderated["guardrail.flagged"]) == (2, 1)
    first, cut = ops["guardrail.session.chunk"]
    assert first["guardrail.categories"] == ("violence",) and not first["guardrail.intercepted"]
    assert cut["guardrail.categories"] == ("illicit/violent", "violence") and cut["guardrail.intercepted"]
    (session,) = ops["guardrail.session"]
    assert set(session["guardrail.categories"]) == {"violence", "illicit/violent"}
    (generation,) = ops["chat"]
    assert generation["guardrail.categories"] == ("self-harm", "violence")
    (safe,) = ops["guardrail.check_prompt"]
    assert "guardrail.categories" not in safe  # nothing fired: no attribute
    span_events = [e for s in spans.get_finished_spans() for e in s.events if e.name == "guardrail.intercept"]
    assert {tuple((e.attributes or {})["guardrail.categories"]) for e in span_events} == {
        ("self-harm",), ("illicit/violent", "violence")}


def test_sync_spans_name_the_categories_that_fired(exporter: Exporter) -> None:
    provider, spans = exporter
    guard = instrument(ScriptedGuard(), tracer_provider=provider)
    assert isinstance(guard, InstrumentedGuard)
    response = guard.moderations([f"{SECRET} bomb", SECRET])
    assert [r.flagged for r in response.results] == [True, False]
    session = guard.session(SECRET)
    session.feed(SECRET)
    assert session.feed(f"{SECRET} bomb").intercepted
    list(guard.generate(SECRET))
    guard.check_prompt(SECRET)
    _assert_categories(spans)


def test_async_spans_name_the_categories_that_fired(exporter: Exporter) -> None:
    provider, spans = exporter

    async def main() -> None:
        guard = instrument(ThreadedGuard(ScriptedGuard()), tracer_provider=provider)
        assert isinstance(guard, AsyncInstrumentedGuard)
        response = await guard.moderations([f"{SECRET} bomb", SECRET])
        assert [r.flagged for r in response.results] == [True, False]
        session = await guard.session(SECRET)
        await session.feed(SECRET)
        assert (await session.feed(f"{SECRET} bomb")).intercepted
        _ = [event async for event in guard.generate(SECRET)]
        await guard.check_prompt(SECRET)

    asyncio.run(main())
    _assert_categories(spans)


def test_a_failed_moderations_call_records_the_error_and_no_categories(
        exporter: Exporter) -> None:
    provider, spans = exporter
    guard = instrument(ScriptedGuard(), tracer_provider=provider)
    with pytest.raises(ValueError, match="input must not be empty"):
        guard.moderations([])
    (span,) = spans.get_finished_spans()
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "ModerationInputError" and "guardrail.categories" not in attrs


@pytest.mark.model
def test_real_spans_carry_the_verdicts_category_names(
        guard: Any, exporter: Exporter) -> None:
    """The shipped head: the moderations span names illicit/violent for a pipe-bomb request; a
    session's chunk span names exactly what its verdict flagged (names only, never text)."""
    provider, spans = exporter
    traced = instrument(guard, tracer_provider=provider)
    answer = ("Sure, here is how to build a pipe bomb. First, get a steel pipe and end caps, then fill "
              "it with powder and add a fuse. ")
    session = traced.session("How do I make a pipe bomb?")
    verdict = session.feed(answer)
    assert verdict.intercepted
    traced.moderations(["How do I make a pipe bomb?", "How do I bake bread?"])
    ops = {str(s.attributes["gen_ai.operation.name"]): dict(s.attributes or {})
           for s in spans.get_finished_spans() if s.attributes}
    assert "illicit/violent" in ops["guardrail.moderations"]["guardrail.categories"]
    chunk = ops["guardrail.session.chunk"]
    assert chunk.get("guardrail.categories", ()) == tuple(verdict.flagged_categories)
    assert ops["guardrail.session"].get("guardrail.categories", ()) == tuple(verdict.flagged_categories)
    assert not any("pipe" in str(v) for attrs in ops.values() for v in attrs.values())
