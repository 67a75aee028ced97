"""Pydantic types shared by the engine, the server's wire format and the client.

One set of types keeps the embedded `Guard` and the sidecar client interchangeable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

Label = Literal["safe", "unsafe"]
Strategy = Literal["each", "first", "periodic", "annealing"]
Action = Literal["refuse", "stop"]
Role = Literal["system", "user", "assistant"]
CategoryAction = Literal["block", "flag", "allow"]


class ChatMessage(BaseModel):
    """One chat turn, in the OpenAI shape."""

    model_config = ConfigDict(extra="ignore")
    role: Role
    content: str


PromptInput = str | Sequence[ChatMessage | dict[str, Any]]
"""A request: a plain string (one user turn) or chat messages."""


def label_for(score: float, threshold: float) -> Label:
    """The one labelling rule every surface uses: unsafe when the score reaches the threshold."""
    return "unsafe" if score >= threshold else "safe"


class Verdict(BaseModel):
    """The outcome of one safety check."""

    label: Label
    score: float = Field(description="Probability that the conversation is unsafe, in [0, 1].")
    threshold: float
    tokens: int = Field(0, description="Tokens the check covered.")
    latency_ms: float = 0.0
    categories: dict[str, float] = Field(
        default_factory=dict,
        description="Per-category probabilities (OpenAI moderation names) from the same [CLS] pass; "
        "empty for a head without category outputs.",
    )
    flagged_categories: list[str] = Field(
        default_factory=list,
        description="Categories whose probability reached their threshold (action flag or block).",
    )
    blocked_categories: list[str] = Field(
        default_factory=list,
        description="Fired categories whose action is block: each makes the verdict unsafe on its own.",
    )
    category_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="The head's calibrated threshold per category, so a caller can re-judge the scores "
        "under its own category rules.",
    )

    @property
    def unsafe(self) -> bool:
        return self.label == "unsafe"


class CategoryRule(BaseModel):
    """What one category does when its probability reaches its threshold.

    `flag` reports it (the default for every category), `block` also makes the check unsafe
    on its own, `allow` neither reports nor acts. The binary gate stays whatever the rules say:
    a rule can add reasons to stop, never remove the binary verdict's.
    """

    model_config = ConfigDict(extra="forbid")
    action: CategoryAction = "flag"
    threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="None: the head's calibrated threshold for this category."
    )


DEFAULT_CATEGORY_RULE = CategoryRule()


def union_names(*groups: Iterable[str]) -> list[str]:
    """Names from every group, each once, in the order they first appear (first fired)."""
    return list(dict.fromkeys(name for group in groups for name in group))


class CategoryOutcome(NamedTuple):
    """Which categories fired at one check, under a config's rules."""

    flagged: list[str]
    blocked: list[str]


def categories_fired(
    scores: Mapping[str, float],
    thresholds: Mapping[str, float],
    rules: Mapping[str, CategoryRule],
) -> CategoryOutcome:
    """The one category rule: fired when the probability reaches the rule's (or the head's) threshold."""
    flagged: list[str] = []
    blocked: list[str] = []
    for name, probability in scores.items():
        rule = rules.get(name, DEFAULT_CATEGORY_RULE)
        if rule.action == "allow":
            continue
        limit = rule.threshold if rule.threshold is not None else thresholds.get(name, 0.5)
        if label_for(probability, limit) == "unsafe":
            flagged.append(name)
            if rule.action == "block":
                blocked.append(name)
    return CategoryOutcome(flagged, blocked)


class GuardConfig(BaseModel):
    """How strategic decoding and stream moderation decide when to check and when to act."""

    model_config = ConfigDict(extra="forbid")
    strategy: Strategy = "periodic"
    period: int = Field(4, ge=1, le=256, description="Check every `period` tokens (periodic).")
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    tau: int = Field(3, ge=1, le=64, description="Consecutive unsafe checks before acting.")
    hold_back: int = Field(
        4, ge=0, le=512, description="Most recent tokens withheld even after a safe check."
    )
    action: Action = "refuse"
    window: int | None = Field(
        None, ge=1, description="[CLS] sees only this many most recent response tokens."
    )
    check_prompt: bool = True
    categories: dict[str, CategoryRule] = Field(
        default_factory=dict,
        description="Per-category rules by category name (threshold and action); unnamed categories flag "
        "at the head's calibrated thresholds.",
    )

    def overriding(self, base: GuardConfig) -> GuardConfig:
        """`base` with only the fields this config set explicitly replaced.

        A client that sends `{"tau": 5}` keeps the server's calibrated threshold: a partial
        config overrides the fields it names and nothing else. Category rules merge by name.
        """
        update = {name: getattr(self, name) for name in self.model_fields_set}
        if "categories" in update:
            update["categories"] = {**base.categories, **self.categories}
        return base.model_copy(update=update)


def merge_config(base: GuardConfig, override: GuardConfig | None) -> GuardConfig:
    """The effective config: `base` (the calibrated default) with `override`'s set fields."""
    return base if override is None else override.overriding(base)


class TokenEvent(BaseModel):
    """Text released to the caller: every token in it has been covered by a safe check."""

    type: Literal["token"] = "token"
    index: int = Field(description="Index of the first released token in the response.")
    text: str


class ScoreEvent(BaseModel):
    """A safety check ran over the response up to `index` (exclusive)."""

    type: Literal["score"] = "score"
    index: int
    score: float
    unsafe: bool
    streak: int = Field(description="Consecutive unsafe checks so far.")
    categories: dict[str, float] = Field(default_factory=dict, description="Per-category probabilities.")
    flagged_categories: list[str] = Field(default_factory=list)
    blocked_categories: list[str] = Field(default_factory=list)


class InterceptEvent(BaseModel):
    """The guard acted: withheld text after `index` is never released."""

    type: Literal["intercept"] = "intercept"
    index: int = Field(description="Response tokens released before the cut.")
    score: float
    action: Action
    stage: Literal["prompt", "response"] = "response"
    flagged_categories: list[str] = Field(
        default_factory=list, description="Categories that fired at the check that cut the stream."
    )


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    checks: int = 0


class Timings(BaseModel):
    total_ms: float = 0.0
    first_token_ms: float | None = None


class DoneEvent(BaseModel):
    """End of a guarded generation."""

    type: Literal["done"] = "done"
    text: str
    intercepted: bool
    intercept_index: int | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    flagged_categories: list[str] = Field(
        default_factory=list, description="Every category that fired at any check of this generation."
    )


GenerationEvent = Annotated[TokenEvent | ScoreEvent | InterceptEvent | DoneEvent, Field(discriminator="type")]


class GenerationResult(BaseModel):
    """A finished guarded generation (the `--json` shape of `guardrail generate`)."""

    text: str
    intercepted: bool
    intercept_index: int | None = None
    score: float | None = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    flagged_categories: list[str] = Field(
        default_factory=list, description="Every category that fired at any check of this generation."
    )


class ChunkVerdict(BaseModel):
    """What a moderation session says after one chunk of another model's stream."""

    label: Label
    score: float
    threshold: float
    released: str = Field(description="Text newly cleared for display since the last chunk.")
    intercepted: bool = False
    intercept_index: int | None = None
    tokens: int = Field(0, description="Response tokens seen so far.")
    latency_ms: float = 0.0
    categories: dict[str, float] = Field(
        default_factory=dict,
        description="Per-category probabilities at the chunk's last checked pass (empty without categories).",
    )
    flagged_categories: list[str] = Field(
        default_factory=list, description="Categories that fired at any check of this chunk."
    )
    blocked_categories: list[str] = Field(
        default_factory=list, description="Fired categories whose action is block (unsafe on their own)."
    )
