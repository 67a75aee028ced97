"""Metric functions against cases computed by hand."""

from __future__ import annotations

import math

import pytest

from guardrail.eval import metrics as m


def test_binary_metrics_hand_computed() -> None:
    labels = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    preds = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    out = m.binary_metrics(labels, preds)
    assert (out.tp, out.fp, out.tn, out.fn) == (3, 1, 5, 1)
    assert out.precision == pytest.approx(0.75)
    assert out.recall == pytest.approx(0.75)
    assert out.f1 == pytest.approx(0.75)
    assert out.fpr == pytest.approx(1 / 6)


def test_binary_metrics_undefined_ratios_are_none() -> None:
    out = m.binary_metrics([0, 0], [0, 0])  # no positives, nothing predicted
    assert out.precision is None and out.recall is None and out.f1 is None
    assert out.fpr == 0.0
    assert m.binary_metrics([1, 0], [0, 0]).f1 is None  # precision undefined
    with pytest.raises(ValueError):
        m.binary_metrics([1], [1, 0])


def test_auroc_hand_computed_with_ties() -> None:
    # Pairs (pos, neg): (0.9,0.1)=1 (0.9,0.5)=1 (0.5,0.1)=1 (0.5,0.5)=0.5 -> 3.5/4
    assert m.auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert m.auroc([1, 0], [0.2, 0.8]) == 0.0
    assert m.auroc([1, 1, 0], [0.3, 0.3, 0.3]) == 0.5
    assert m.auroc([1, 1], [0.3, 0.4]) is None


def test_roc_curve_points_and_area_match_auroc() -> None:
    labels = [1, 1, 0, 0]
    scores = [0.9, 0.5, 0.5, 0.1]
    fpr, tpr, thresholds = m.roc_curve(labels, scores)
    assert fpr == [0.0, 0.0, 0.5, 1.0]
    assert tpr == [0.0, 0.5, 1.0, 1.0]
    assert thresholds[0] == math.inf and thresholds[1:] == [0.9, 0.5, 0.1]
    area = sum((fpr[i + 1] - fpr[i]) * (tpr[i + 1] + tpr[i]) / 2 for i in range(len(fpr) - 1))
    assert area == pytest.approx(m.auroc(labels, scores))
    with pytest.raises(ValueError):
        m.roc_curve([1, 1], [0.1, 0.2])


def test_rates_and_attack_success() -> None:
    assert m.rate([]) is None
    assert m.attack_success_rate([True, False, False, True]) == 0.5
    # Two requests, three seeds each: the first falls to one seed, the second to none.
    assert m.any_success_rate({"a": [False, True, False], "b": [False, False, False]}) == 0.5


def test_wilson_interval_hand_computed() -> None:
    lo, hi = m.wilson_interval(5, 10) or (0, 0)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = m.wilson_interval(0, 4) or (1, 1)
    assert lo == 0.0 and hi == pytest.approx(0.4899, abs=1e-4)
    assert m.wilson_interval(0, 0) is None


def test_summary_percentile_throughput_overhead() -> None:
    s = m.summary([4, 1, 3, 2])
    assert s == {"n": 4, "mean": 2.5, "median": 2.5, "p90": pytest.approx(3.7), "min": 1, "max": 4}
    assert m.summary([])["mean"] is None
    assert m.percentile([10], 90) == 10
    assert m.throughput(50, 2.0) == 25.0 and m.throughput(5, 0.0) is None
    assert m.overhead(1.5, 1.0) == pytest.approx(0.5) and m.overhead(1.0, 0.0) is None
