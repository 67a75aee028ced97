"""Where a head's threshold sits: the rules that choose it on validation rows, by kind of benign request.

A single false-positive cap over every benign validation row lets whichever kind dominates the
split decide the threshold. The targets are per kind (ordinary requests: at most 2% flagged;
benign requests that sound alarming: at most 5%), so the rules here measure each kind apart:

- `per_kind_threshold`: the lowest threshold (highest recall) at which every kind meets its
  target, clipped to `CLIP` (the training pipeline's rule);
- `matched_threshold`: for a variant of a head (the int8 head of an fp32 one), the lowest
  threshold at which every kind is flagged no more often than the reference head flags it at
  its own threshold, so that the variant reproduces the reference's operating point instead of
  drifting with its own score scale.

Both look at validation rows only; held-out sources are never read here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from guardrail.training.kvstore import Shard
    from guardrail.training.trainer import Scored

BenignKind = Literal["ordinary", "alarming"]
#: The false-positive target of each kind of benign request (the head issue's targets).
KIND_TARGETS: dict[BenignKind, float] = {"ordinary": 0.02, "alarming": 0.05}
#: Training sources whose benign requests sound alarming (harmless targets, fiction, safety).
ALARMING_SOURCES = ("hard_negative", "written_alarming_benign", "rho_refusal_benign")
#: A threshold is never chosen outside this range: below it a head flags on noise, above it
#: a reworded attack slips under a near-certain score.
CLIP = (0.2, 0.9)

PER_KIND_RULE = (
    "lowest threshold at which every kind of benign validation request meets its false-positive "
    "target (ordinary <= 2%, alarming <= 5%; a rewording keeps its request's kind; answers are "
    "measured by their own figures), clipped to [0.2, 0.9]"
)
MATCHED_RULE = (
    "lowest threshold at which every kind of benign validation request (ordinary, alarming) is "
    "flagged no more often than the reference head flags it at its own threshold"
)


def benign_kind(group: str) -> BenignKind | None:
    """The kind of a training group's benign rows; None for answers and generated trajectories.

    A group name is `[augmentation|]source[#val]`; a rewording keeps the kind of the request it
    rewords.
    """
    base = group.split("#")[0]
    if base.startswith(("resp:", "resp_heldout:")):
        return None
    source = base.split("|")[-1]
    return "alarming" if source in ALARMING_SOURCES else "ordinary"


@dataclass(frozen=True)
class KindScores:
    """Prompt-check scores of validation rows, with their labels and their benign kind."""

    scores: np.ndarray
    labels: np.ndarray
    kinds: tuple[BenignKind | None, ...]

    @classmethod
    def scored(cls, scored: Scored, shards: Sequence[Shard]) -> KindScores:
        """The scores `trainer.score` gave `shards` (row order: shard by shard, sample by sample)."""
        groups = [shard.group for shard in shards for _ in shard.samples]
        return cls.of(scored.prompt_scores, scored.prompt_labels, groups)

    @classmethod
    def of(cls, scores: np.ndarray, labels: np.ndarray, groups: Iterable[str]) -> KindScores:
        kinds = tuple(benign_kind(g) for g in groups)
        if len(kinds) != len(scores) or len(scores) != len(labels):
            raise ValueError("scores, labels and groups must be aligned")
        return cls(np.asarray(scores, dtype=float), np.asarray(labels), kinds)

    def benign(self, kind: BenignKind) -> np.ndarray:
        chosen = np.array([k == kind for k in self.kinds], dtype=bool)
        return self.scores[chosen & (self.labels == 0)]

    def fpr(self, threshold: float) -> dict[BenignKind, float]:
        """False-positive rate of each kind present at `threshold`."""
        out: dict[BenignKind, float] = {}
        for kind in KIND_TARGETS:
            rows = self.benign(kind)
            if len(rows):
                out[kind] = float(np.mean(rows >= threshold))
        return out

    def recall(self, threshold: float) -> float | None:
        known = np.array([k is not None for k in self.kinds], dtype=bool)
        positives = self.scores[known & (self.labels == 1)]
        return float(np.mean(positives >= threshold)) if len(positives) else None


def _lowest_meeting(scores: KindScores, caps: dict[BenignKind, float]) -> float:
    """The lowest threshold at which each kind's false-positive rate is within its cap."""
    candidates = [0.0]
    for kind, cap in caps.items():
        rows = np.sort(scores.benign(kind))
        if not len(rows):
            continue
        # Flagging at most floor(cap * n) rows of this kind: the threshold must sit just above
        # the row ranked one past that count from the top.
        allowed = int(np.floor(cap * len(rows) + 1e-9))
        if allowed < len(rows):
            candidates.append(float(rows[len(rows) - 1 - allowed]) + 1e-6)
    return max(candidates)


def per_kind_threshold(scores: KindScores, targets: dict[BenignKind, float] = KIND_TARGETS) -> float:
    """The training pipeline's rule (`PER_KIND_RULE`)."""
    return float(np.clip(_lowest_meeting(scores, targets), *CLIP))


def matched_threshold(reference: KindScores, reference_threshold: float, variant: KindScores) -> float:
    """A variant head's threshold reproducing `reference`'s operating point (`MATCHED_RULE`)."""
    caps = reference.fpr(reference_threshold)
    return float(np.clip(_lowest_meeting(variant, caps), 0.0, 1.0))


def summary(scores: KindScores, threshold: float) -> dict[str, object]:
    """What a report says about a threshold: per-kind false-positive rates and recall."""
    return {"threshold": threshold, "fpr_by_kind": scores.fpr(threshold), "recall": scores.recall(threshold)}
