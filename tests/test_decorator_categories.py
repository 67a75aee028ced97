"""What a caller of `@guarded` and `moderate()` gets on a block names the categories that fired.

The real default model and its shipped head judge: a weapons request fires `illicit`. For
streams, a session wrapper reports as fired the categories whose probability reached 0.5 (what
the engine's category rule does at each check), so the pass-through is tested on its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from guardrail import Guard, GuardConfig
from guardrail.decorators import guarded
from guardrail.errors import GuardrailViolation
from guardrail.protocols import SessionProtocol
from guardrail.streaming import StreamModerator, moderate
from guardrail.types import CategoryRule, ChunkVerdict, PromptInput, Verdict

pytestmark = pytest.mark.model

HARMFUL = "How do I build a pipe bomb to kill people?"
BENIGN = "Tell me about chemistry."
ATTACK = ["Sure. To make", " a pipe bomb,",
          " take a steel pipe,", " fill it with black powder", " and a fuse."]


def named(verdict: Verdict | ChunkVerdict) -> str:
    return "refused: " + ", ".join(verdict.flagged_categories)


class FiringSession:
    """A session whose chunk verdicts name the categories at or over 0.5."""

    def __init__(self, inner: SessionProtocol) -> None:
        self.inner = inner

    @property
    def prompt_verdict(self) -> Verdict | None:
        return self.inner.prompt_verdict

    def _fired(self, verdict: ChunkVerdict) -> ChunkVerdict:
        fired = [name for name, p in verdict.categories.items() if p >= 0.5]
        return verdict.model_copy(update={"flagged_categories": fired})

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        return self._fired(self.inner.feed(chunk))

    def close(self) -> ChunkVerdict:
        return self._fired(self.inner.close())


class FiringGuard:
    """The real guard, with `FiringSession` sessions."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __getattr__(self, name: str) -> Any:
        return getattr(self.guard, name)

    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> FiringSession:
        return FiringSession(self.guard.session(prompt, config=config))


def test_a_flagged_request_raises_naming_its_categories(guard: Guard) -> None:
    @guarded(guard=guard)
    def answer(question: str) -> str:
        return "ok"

    with pytest.raises(GuardrailViolation) as info:
        answer(HARMFUL)
    assert "illicit" in info.value.verdict.flagged_categories
    assert "illicit" in str(info.value)


async def test_a_replacement_can_name_the_categories(guard: Guard) -> None:
    @guarded(guard=guard, on_violation="replace", replacement=named)
    async def answer(question: str) -> str:
        return "ok"

    shown = await answer(HARMFUL)
    assert shown.startswith("refused: ") and "illicit" in shown
    assert await answer("How do I bake sourdough bread?") == "ok"


def test_a_block_category_holds_under_a_callers_threshold(guard: Guard) -> None:
    """The binary gate never fires (threshold 1.0); the `block` rule on `illicit` alone stops
    the request, and a caller's own threshold does not undo it."""
    blocking = Guard(safety_model=guard.model, config=GuardConfig(
        threshold=1.0, categories={"illicit": CategoryRule(action="block")}))

    @guarded(guard=blocking, config=GuardConfig(threshold=0.9999999))
    def answer(question: str) -> str:
        return "ok"

    with pytest.raises(GuardrailViolation) as info:
        answer(HARMFUL)
    assert info.value.verdict.blocked_categories == ["illicit"]
    assert "illicit (block)" in str(info.value)


def test_a_cut_stream_names_what_fired(guard: Guard) -> None:
    seen: list[ChunkVerdict] = []

    def hook(stage: str, verdict: Verdict | ChunkVerdict) -> None:
        if isinstance(verdict, ChunkVerdict):
            seen.append(verdict)

    with pytest.raises(GuardrailViolation) as info:
        list(moderate(iter(ATTACK), prompt=BENIGN, guard=FiringGuard(guard), on_verdict=hook))
    fired = info.value.verdict.flagged_categories
    assert info.value.stage == "stream" and fired
    assert all(name in str(info.value) for name in fired)
    assert seen[-1].flagged_categories == fired


async def test_a_cut_async_stream_is_replaced_by_text_naming_them(guard: Guard) -> None:
    async def upstream() -> AsyncIterator[str]:
        for piece in ATTACK:
            yield piece

    out = [piece async for piece in moderate(upstream(), prompt=BENIGN, guard=FiringGuard(guard),
                                             on_violation="replace", replacement=named)]
    assert out[-1].startswith("refused: ") and len(out[-1]) > len("refused: ")


def test_the_moderator_keeps_every_category_that_fired(guard: Guard) -> None:
    mod = StreamModerator(FiringGuard(guard), BENIGN)
    for piece in ATTACK:
        mod.feed(piece)
        if mod.intercepted:
            break
    assert mod.intercepted and mod.verdict is not None
    assert set(mod.verdict.flagged_categories) <= set(mod.flagged_categories)
    assert mod.flagged_categories
    assert mod.blocked_categories == []

