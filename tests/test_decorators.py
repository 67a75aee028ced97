"""`@guarded` on plain, async, generator and async-generator functions.

Thresholds pin the outcome (0.0 flags everything, 1.0 nothing), so these tests exercise the
decorator's plumbing, not the head's judgement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from guardrail import Guard, GuardConfig, Verdict
from guardrail.decorators import guarded
from guardrail.errors import GuardrailViolation
from guardrail.streaming import DEFAULT_REPLACEMENT
from tests.oracle import assert_released_before_the_cut, keyword_model, words_of
from tests.test_server_support import SAFE_PART, SCRIPT

ANSWER = ["Knead the", " dough for", " ten minutes,", " then let", " it rise."]


@pytest.fixture(scope="module")
def allow(guard: Guard) -> Guard:
    return Guard(safety_model=guard.model, config=GuardConfig(threshold=1.0, tau=1, hold_back=2))


@pytest.fixture(scope="module")
def flag(guard: Guard) -> Guard:
    return Guard(safety_model=guard.model, config=GuardConfig(threshold=0.0, tau=1, hold_back=0))


def test_plain_function_passes_when_safe(allow: Guard) -> None:
    stages: list[str] = []

    @guarded(guard=allow, on_verdict=lambda stage, v: stages.append(stage))
    def answer(question: str) -> str:
        return "".join(ANSWER)

    assert answer("How do I make bread?") == "".join(ANSWER)
    assert stages == ["input", "output"]
    assert answer.__name__ == "answer"  # functools.wraps


def test_flagged_input_never_calls_the_function(flag: Guard) -> None:
    calls: list[str] = []

    @guarded(guard=flag)
    def answer(question: str) -> str:
        calls.append(question)
        return "ok"

    with pytest.raises(GuardrailViolation) as info:
        answer("anything")
    assert info.value.stage == "input" and isinstance(info.value.verdict, Verdict)
    assert calls == []


def test_flagged_output_raise_or_replace(flag: Guard) -> None:
    @guarded(guard=flag, check_input=False)
    def raising(question: str) -> str:
        return "answer"

    with pytest.raises(GuardrailViolation) as info:
        raising("q")
    assert info.value.stage == "output"

    @guarded(guard=flag, check_input=False, on_violation="replace", replacement="nope")
    def replacing(question: str) -> str:
        return "answer"

    assert replacing("q") == "nope"


def test_prompt_argument_selection(allow: Guard) -> None:
    seen: list[Any] = []

    class Recorder:
        """A guard that records what it was asked about and defers to `allow`."""

        def check_prompt(self, prompt: Any) -> Verdict:
            seen.append(prompt)
            return allow.check_prompt(prompt)

        def check_response(self, prompt: Any, response: str) -> Verdict:
            return allow.check_response(prompt, response)

        def session(self, prompt: Any, *, config: GuardConfig | None = None) -> Any:
            return allow.session(prompt, config=config)

    @guarded(guard=Recorder(), prompt_arg="question", check_output=False)
    def by_name(user_id: str, question: str) -> str:
        return "ok"

    @guarded(guard=Recorder(), check_output=False)
    def messages(history: list[dict[str, str]], temperature: float = 0.0) -> str:
        return "ok"

    @guarded(guard=Recorder(), prompt_from=lambda req: req["text"], check_output=False)
    def custom(req: dict[str, str]) -> str:
        return "ok"

    by_name("user-42", "How do I make bread?")
    messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    custom({"text": "Hello"})
    assert seen == ["How do I make bread?",
                    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                    "Hello"]
    with pytest.raises(TypeError, match="no argument"):
        guarded(guard=allow, prompt_arg="missing")(lambda question: "x")("q")


def test_methods_skip_self(allow: Guard) -> None:
    class Bot:
        @guarded(guard=allow, check_output=False)
        def reply(self, question: str) -> str:
            return question.upper()

    assert Bot().reply("hello") == "HELLO"


def test_non_text_outputs_are_not_checked(flag: Guard) -> None:
    @guarded(guard=flag, check_input=False)
    def numbers(question: str) -> list[int]:
        return [1, 2]

    assert numbers("q") == [1, 2]


async def test_async_function(allow: Guard, flag: Guard) -> None:
    @guarded(guard=allow)
    async def ok(question: str) -> dict[str, str]:
        return {"role": "assistant", "content": "Bake at 220 C."}

    assert (await ok("bread?"))["content"] == "Bake at 220 C."

    @guarded(guard=flag, on_violation="replace")
    async def cut(question: str) -> str:
        raise AssertionError("must not run")

    assert await cut("q") == DEFAULT_REPLACEMENT


def test_generator_is_moderated(allow: Guard, flag: Guard) -> None:
    @guarded(guard=allow)
    def stream(question: str) -> Iterator[str]:
        yield from ANSWER

    assert "".join(stream("bread?")) == "".join(ANSWER)

    closed: list[bool] = []

    @guarded(guard=flag, check_input=False, on_violation="replace", replacement="[cut]")
    def unsafe(question: str) -> Iterator[str]:
        try:
            yield from ANSWER
        finally:
            closed.append(True)

    assert list(unsafe("q")) == ["[cut]"]
    assert closed == [True]  # the upstream generator was closed at the cut

    @guarded(guard=flag, check_input=False)
    def raising(question: str) -> Iterator[str]:
        yield from ANSWER

    with pytest.raises(GuardrailViolation) as info:
        list(raising("q"))
    assert info.value.stage == "stream" and info.value.verdict.intercepted


CUT_CONFIG = GuardConfig(strategy="each", tau=1, hold_back=2, threshold=0.5)
SPLITS = {"fine": words_of(SCRIPT), "coarse": [SAFE_PART, SCRIPT[len(SAFE_PART):]]}


@pytest.fixture(scope="module")
def keyword_guard(tokenizer: Any) -> Guard:
    """Flags every check that reads " bomb"; SCRIPT is safe up to it."""
    return Guard(safety_model=keyword_model(tokenizer), config=CUT_CONFIG)


@pytest.mark.parametrize("split", SPLITS)
def test_generator_flagged_after_safe_chunks_releases_only_checked_text(
        keyword_guard: Guard, tokenizer: Any, split: str) -> None:
    closed: list[bool] = []

    @guarded(guard=keyword_guard, check_input=False)
    def story(question: str) -> Iterator[str]:
        try:
            yield from SPLITS[split]
        finally:
            closed.append(True)

    shown: list[str] = []
    with pytest.raises(GuardrailViolation) as info:
        for piece in story("Tell me a story"):
            shown.append(piece)
    assert info.value.stage == "stream" and info.value.released == "".join(shown)
    assert_released_before_the_cut(tokenizer, SCRIPT, "".join(shown), CUT_CONFIG, exact=split == "fine",
                                   safe_prefix=SAFE_PART)
    assert closed == [True]


@pytest.mark.parametrize("split", SPLITS)
async def test_async_generator_flagged_after_safe_chunks_is_replaced(
        keyword_guard: Guard, tokenizer: Any, split: str) -> None:
    @guarded(guard=keyword_guard, check_input=False, on_violation="replace", replacement="[cut]")
    async def story(question: str) -> AsyncIterator[str]:
        for piece in SPLITS[split]:
            yield piece

    out = [p async for p in story("Tell me a story")]
    assert out[-1] == "[cut]"
    assert_released_before_the_cut(tokenizer, SCRIPT, "".join(out[:-1]), CUT_CONFIG, exact=split == "fine",
                                   safe_prefix=SAFE_PART)


def test_whole_flagged_output_is_withheld(keyword_guard: Guard) -> None:
    @guarded(guard=keyword_guard, check_input=False, on_violation="replace", replacement="[cut]")
    def answer(question: str) -> str:
        return SCRIPT

    @guarded(guard=keyword_guard, check_input=False)
    def safe(question: str) -> str:
        return SAFE_PART

    assert answer("Tell me a story") == "[cut]"
    assert safe("Tell me a story") == SAFE_PART


def test_generator_input_check_happens_before_the_body(flag: Guard) -> None:
    started: list[bool] = []

    @guarded(guard=flag, on_violation="replace")
    def stream(question: str) -> Iterator[str]:
        started.append(True)
        yield "x"

    assert list(stream("q")) == [DEFAULT_REPLACEMENT]
    assert started == []


async def test_async_generator(allow: Guard, flag: Guard) -> None:
    @guarded(guard=allow)
    async def stream(question: str) -> AsyncIterator[str]:
        for piece in ANSWER:
            yield piece

    assert "".join([p async for p in stream("bread?")]) == "".join(ANSWER)

    @guarded(guard=flag, check_input=False, on_violation="replace")
    async def unsafe(question: str) -> AsyncIterator[str]:
        for piece in ANSWER:
            yield piece

    assert [p async for p in unsafe("q")] == [DEFAULT_REPLACEMENT]

    @guarded(guard=flag, check_output=False, on_violation="replace")
    async def input_only(question: str) -> AsyncIterator[str]:
        yield "never"

    assert [p async for p in input_only("q")] == [DEFAULT_REPLACEMENT]


def test_bare_decorator_uses_the_default_guard(allow: Guard) -> None:
    from guardrail import streaming

    previous = streaming._default_guard
    streaming.set_default_guard(allow)
    try:
        @guarded
        def answer(question: str) -> str:
            return "Preheat the oven."

        assert answer("bread?") == "Preheat the oven."
    finally:
        streaming.set_default_guard(previous)


def test_invalid_option() -> None:
    with pytest.raises(ValueError, match="on_violation"):
        guarded(on_violation="ignore")(lambda q: q)  # type: ignore[call-overload]


def test_decorator_example_runs(guard: Guard, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "decorator_app.py"
    spec = importlib.util.spec_from_file_location("decorator_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(guard)
    assert "Q: How do I bake sourdough bread?" in capsys.readouterr().out
