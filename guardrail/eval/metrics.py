"""Metric functions, kept free of the model so each can be checked against hand-computed cases.

Only the standard library is used: the report must not depend on a training extra, and the
sample sizes here are small enough that plain Python is fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


def rate(flags: Sequence[bool]) -> float | None:
    """Share of true flags; None (not 0) for an empty set, so a missing suite is not a perfect score."""
    return sum(1 for f in flags if f) / len(flags) if flags else None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval: small suites deserve error bars, and it stays inside [0, 1]."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def attack_success_rate(complied: Sequence[bool]) -> float | None:
    """ASR: share of harmful requests whose final output complies."""
    return rate(complied)


def any_success_rate(groups: dict[str, list[bool]]) -> float | None:
    """ASR when an attack gets several tries per request (e.g. seeds): a request falls if any try does."""
    return rate([any(tries) for tries in groups.values()])


@dataclass(frozen=True)
class BinaryMetrics:
    """Prompt-level classification at one threshold; positives are harmful prompts."""

    tp: int
    fp: int
    tn: int
    fn: int
    precision: float | None
    recall: float | None
    f1: float | None
    fpr: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def binary_metrics(labels: Sequence[int], predictions: Sequence[int]) -> BinaryMetrics:
    """Precision, recall, F1 and false-positive rate; undefined ratios are None, not 0."""
    if len(labels) != len(predictions):
        raise ValueError("labels and predictions differ in length")
    tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, predictions, strict=True) if not y and p)
    fn = sum(1 for y, p in zip(labels, predictions, strict=True) if y and not p)
    tn = len(labels) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    fpr = fp / (fp + tn) if fp + tn else None
    return BinaryMetrics(tp, fp, tn, fn, precision, recall, f1, fpr)


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[list[float], list[float], list[float]]:
    """(fpr, tpr, thresholds), one point per distinct score, from (0, 0) to (1, 1).

    A prompt is predicted positive when its score is >= the threshold, as the guard does.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if not pos or not neg:
        raise ValueError("a ROC curve needs both harmful and benign prompts")
    pairs = sorted(zip(scores, labels, strict=True), key=lambda p: -p[0])
    fpr, tpr, thresholds = [0.0], [0.0], [math.inf]
    tp = fp = 0
    i = 0
    while i < len(pairs):
        threshold = pairs[i][0]
        while i < len(pairs) and pairs[i][0] == threshold:
            if pairs[i][1]:
                tp += 1
            else:
                fp += 1
            i += 1
        fpr.append(fp / neg)
        tpr.append(tp / pos)
        thresholds.append(threshold)
    return fpr, tpr, thresholds


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: the chance a random harmful prompt outscores a random benign one.

    Ties count one half (Mann-Whitney U). None when one class is missing.
    """
    if len(labels) != len(scores):
        raise ValueError("labels and scores differ in length")
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return None
    ranked = sorted(scores)
    # Average rank of each distinct score (1-based), then the rank-sum form of U.
    rank_of: dict[float, float] = {}
    i = 0
    while i < len(ranked):
        j = i
        while j < len(ranked) and ranked[j] == ranked[i]:
            j += 1
        rank_of[ranked[i]] = (i + 1 + j) / 2
        i = j
    rank_sum = sum(rank_of[s] for s in pos)
    u = rank_sum - len(pos) * (len(pos) + 1) / 2
    return u / (len(pos) * len(neg))


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """n, mean, median, 90th percentile, min and max; None fields for an empty sample."""
    if not values:
        return {"n": 0, "mean": None, "median": None, "p90": None, "min": None, "max": None}
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "mean": sum(ordered) / len(ordered),
        "median": percentile(ordered, 50),
        "p90": percentile(ordered, 90),
        "min": ordered[0],
        "max": ordered[-1],
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of an empty sample")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def throughput(tokens: int, seconds: float) -> float | None:
    """Tokens per second; None when nothing was timed."""
    return tokens / seconds if seconds > 0 else None


def overhead(guarded_s: float, unguarded_s: float) -> float | None:
    """Extra wall time of the guarded run, as a fraction of the unguarded one (0.3 = 30% slower)."""
    return guarded_s / unguarded_s - 1 if unguarded_s > 0 else None
