"""The OpenAI moderation shapes and the one rule from a verdict to a moderation result.

`POST /v1/moderations`, `Guard.moderations`, `EmbeddedGuard.moderations` and both sidecar
clients read their input and build their answer here, so every surface accepts the same input,
rejects the same input with the same message, and reports the same result for the same verdict.
Imports pydantic only (no torch): the sidecar client uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from guardrail.model.prompts import InputError
from guardrail.types import Verdict

#: The OpenAI moderation categories, in their order; a category head may add custom names.
MODERATION_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
APPLIED_INPUT_TYPES: list[str] = ["text"]


class TextPart(BaseModel):
    """A text content part, as OpenAI's multi-modal moderation input spells it."""

    type: Literal["text"]
    text: str


class ImageURL(BaseModel):
    url: str


class ImageURLPart(BaseModel):
    """An image part: accepted by the schema so the answer can say why it is refused."""

    type: Literal["image_url"]
    image_url: ImageURL


ModerationPart = Annotated[TextPart | ImageURLPart, Field(discriminator="type")]
ModerationInput = str | Sequence[str] | Sequence[TextPart | ImageURLPart | Mapping[str, Any]]
"""What `moderations(input)` takes: a string, a list of strings, or a list of content parts."""

_PART = TypeAdapter(ModerationPart)


class ModerationInputError(InputError):
    """Input no surface can moderate; `param` is the request field it is about (4xx on the sidecar)."""

    def __init__(self, message: str, param: str = "input") -> None:
        super().__init__(message)
        self.param = param


class ModerationResult(BaseModel):
    """One input's result, in OpenAI's shape."""

    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(BaseModel):
    """OpenAI's moderation response: one result per input, in order."""

    id: str
    model: str
    results: list[ModerationResult]


def moderation_texts(input: ModerationInput) -> list[str]:
    """The texts to classify: the string, each string of a list, or the text parts joined as one.

    Raises `ModerationInputError` naming the problem: an empty list, strings mixed with parts,
    a part that is not a content part, or an image part (this guard reads text only).
    """
    if isinstance(input, str):
        return [input]
    items = list(input)
    if not items:
        raise ModerationInputError("input must not be empty")
    if all(isinstance(item, str) for item in items):
        return [item for item in items if isinstance(item, str)]
    texts: list[str] = []
    for i, item in enumerate(items):
        part = _part(i, item)
        if isinstance(part, ImageURLPart):
            raise ModerationInputError(f"input.{i} is an image_url part; only text can be moderated "
                                       "(send its text parts, or a string)", f"input.{i}")
        texts.append(part.text)
    return ["".join(texts)]


def _part(index: int, item: object) -> TextPart | ImageURLPart:
    if isinstance(item, TextPart | ImageURLPart):
        return item
    if isinstance(item, str):
        raise ModerationInputError(f"input.{index} is a string in a list of content parts; send strings "
                                   "or parts, not both", f"input.{index}")
    try:
        return _PART.validate_python(item)
    except ValidationError as exc:
        raise ModerationInputError(f"input.{index} is not a text or image_url content part "
                                   f"({exc.errors()[0]['msg']})", f"input.{index}") from exc


def moderation_result(verdict: Verdict) -> ModerationResult:
    """The one rule: flagged is the verdict's label (block rules included); a category is true
    when the verdict flagged it (so `allow` rules give false); every public name gets a score
    (0.0 where the head lacks it), custom categories the head reports follow them."""
    names = list(MODERATION_CATEGORIES) + [n for n in verdict.categories if n not in MODERATION_CATEGORIES]
    fired = set(verdict.flagged_categories)
    return ModerationResult(
        flagged=verdict.unsafe,
        categories={name: name in fired for name in names},
        category_scores={name: float(verdict.categories.get(name, 0.0)) for name in names},
        category_applied_input_types={name: list(APPLIED_INPUT_TYPES) for name in names},
    )


def moderation_response(verdicts: Sequence[Verdict], model: str) -> ModerationResponse:
    """The response for one call: a fresh `modr-` id, the model's name, one result per verdict."""
    return ModerationResponse(id=f"modr-{uuid.uuid4().hex}", model=model,
                              results=[moderation_result(v) for v in verdicts])


def fired_categories(response: ModerationResponse) -> list[str]:
    """The category names that fired anywhere in a response, in first-seen order (for spans)."""
    seen: dict[str, None] = {}
    for result in response.results:
        seen.update((name, None) for name, fired in result.categories.items() if fired)
    return list(seen)


__all__ = [
    "MODERATION_CATEGORIES",
    "ImageURLPart",
    "ModerationInput",
    "ModerationInputError",
    "ModerationPart",
    "ModerationResponse",
    "ModerationResult",
    "TextPart",
    "fired_categories",
    "moderation_response",
    "moderation_result",
    "moderation_texts",
]
