"""`moderations`, OpenAI's moderation call, over every surface of the guard (see `surfaces.py`).

Each surface is called through its async view (`Surface.aguard`: the async client itself, or a
sync guard in worker threads) and, where it has one, its sync method; both must give the
reference (embedded) response and the same verdict as `check_prompt` (so the calibrated
threshold), honour a per-call config for that call only, and refuse the same bad input with the
same `InputError` before any work is done.
"""

from __future__ import annotations

from typing import Any

import pytest

from guardrail import Guard, GuardConfig
from guardrail.model.prompts import InputError
from guardrail.moderation import MODERATION_CATEGORIES, ModerationResponse
from tests.conformance.surfaces import Surface

SAFE = "How do I bake bread?"
UNSAFE = "Tell me how a bomb works."
PARTS = [{"type": "text", "text": "Tell me how a"}, {"type": "text", "text": " bomb works."}]
STRICTER = GuardConfig(threshold=0.005)  # under the keyword model's safe score (0.01): all flagged
BAD = [([], "input must not be empty"),
       ([{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}],
        "input.0 is an image_url part"),
       ([{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "x"}}],
        "input.1 is an image_url part")]


def _moderations(surface: Surface, input: Any, config: GuardConfig | None = None) -> ModerationResponse:
    """The async view's answer; the sync method's too where the surface has one (they must agree)."""
    answer: ModerationResponse = surface.run(surface.aguard.moderations(input, config=config))
    sync = getattr(surface.guard, "moderations", None)
    if sync is not None:
        _same(sync(input, config=config), answer)
    return answer


def _same(a: ModerationResponse, b: ModerationResponse) -> None:
    assert [r.flagged for r in a.results] == [r.flagged for r in b.results]
    for x, y in zip(a.results, b.results, strict=True):
        assert x.categories == y.categories
        assert x.category_applied_input_types == y.category_applied_input_types
        assert x.category_scores == pytest.approx(y.category_scores, abs=1e-4)
    assert a.id.startswith("modr-") and b.id.startswith("modr-")


@pytest.mark.parametrize("input", [[SAFE, UNSAFE, SAFE], UNSAFE, PARTS], ids=["list", "string", "parts"])
def test_moderations_match_the_reference(surface: Surface, reference: Guard, input: Any) -> None:
    answer = _moderations(surface, input)
    _same(answer, reference.moderations(input))
    texts = [input] if isinstance(input, str) else input if isinstance(input[0], str) else ["".join(
        part["text"] for part in input)]
    assert [r.flagged for r in answer.results] == [reference.check_prompt(t).unsafe for t in texts]
    assert len(answer.results) == len(texts) and any(r.flagged for r in answer.results)
    for result in answer.results:
        assert list(result.category_scores)[: len(MODERATION_CATEGORIES)] == list(MODERATION_CATEGORIES)


def test_moderations_honour_a_per_call_config(surface: Surface) -> None:
    plain = _moderations(surface, [SAFE, UNSAFE])
    assert [r.flagged for r in plain.results] == [False, True]
    stricter = _moderations(surface, [SAFE, UNSAFE], config=STRICTER)
    assert [r.flagged for r in stricter.results] == [True, True]
    assert [r.flagged for r in _moderations(surface, [SAFE]).results] == [False]  # the call's only


@pytest.mark.parametrize(("bad", "message"), BAD, ids=["empty", "image", "image-after-text"])
def test_bad_input_is_an_input_error_naming_it(surface: Surface, bad: Any, message: str) -> None:
    with pytest.raises(InputError, match=message):
        surface.run(surface.aguard.moderations(bad))
    sync = getattr(surface.guard, "moderations", None)
    if sync is not None:
        with pytest.raises(InputError, match=message):
            sync(bad)
    assert not _moderations(surface, SAFE).results[0].flagged  # nothing changed; still serving
