"""The threshold rules: per kind of benign request, and matching a reference head's operating point."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrail.training import operating_point as op


def _scores(ordinary: list[float], alarming: list[float], positives: list[float]) -> op.KindScores:
    scores = ordinary + alarming + positives
    labels = [0] * (len(ordinary) + len(alarming)) + [1] * len(positives)
    groups = (["written_ordinary#val"] * len(ordinary) + ["hard_negative#val"] * len(alarming)
              + ["advbench#val"] * len(positives))
    return op.KindScores.of(np.array(scores), np.array(labels), groups)


def test_kinds_follow_the_request_source_through_rewordings() -> None:
    assert op.benign_kind("hard_negative#val") == "alarming"
    assert op.benign_kind("aug:benign_reword|written_alarming_benign#val") == "alarming"
    assert op.benign_kind("traj:rho_pairs|rho_refusal_benign") == "alarming"
    assert op.benign_kind("aug:benign_reword|written_ordinary#val") == "ordinary"
    assert op.benign_kind("persistbench") == "ordinary"
    assert op.benign_kind("resp:harm_then_benign|advbench#val") is None


def test_each_kind_is_held_to_its_own_target() -> None:
    # 100 ordinary rows: two may be flagged (2%); 100 alarming rows: five may (5%).
    ordinary = [i / 1000 for i in range(97)] + [0.5, 0.6, 0.7]
    alarming = [i / 1000 for i in range(94)] + [0.75, 0.8, 0.85, 0.86, 0.87, 0.88]
    scores = _scores(ordinary, alarming, [0.99] * 10)
    threshold = op.per_kind_threshold(scores)
    fpr = scores.fpr(threshold)
    assert fpr["ordinary"] <= 0.02 and fpr["alarming"] <= 0.05
    # The alarming kind binds here: its sixth-highest row (0.75) must not be flagged, the fifth may.
    assert 0.75 < threshold <= 0.8


def test_a_single_cap_over_all_rows_would_have_chosen_otherwise() -> None:
    """The rule is not a pooled quantile: a dominant kind cannot set the other's rate."""
    ordinary = [0.01] * 48 + [0.8, 0.85]  # 4% of ordinary rows score high
    alarming = [0.1] * 200
    scores = _scores(ordinary, alarming, [0.99] * 10)
    threshold = op.per_kind_threshold(scores)
    assert scores.fpr(threshold)["ordinary"] <= 0.02  # a pooled 2% cap (5 of 250) would flag both
    assert 0.8 < threshold <= 0.85


def test_the_threshold_is_clipped() -> None:
    assert op.per_kind_threshold(_scores([0.0] * 50, [0.0] * 50, [1.0])) == op.CLIP[0]
    assert op.per_kind_threshold(_scores([1.0] * 50, [1.0] * 50, [1.0])) == op.CLIP[1]


def test_matching_reproduces_the_reference_operating_point() -> None:
    rng = np.random.default_rng(0)
    ordinary, alarming = rng.beta(1, 8, 300).tolist(), rng.beta(2, 5, 300).tolist()
    reference = _scores(ordinary, alarming, [0.9] * 20)
    # The variant scores every benign row higher (int8 features raise borderline scores).
    def raised(rows: list[float]) -> list[float]:
        return [min(1.0, s * 1.3 + 0.05) for s in rows]

    variant = _scores(raised(ordinary), raised(alarming), [0.95] * 20)
    threshold = op.matched_threshold(reference, 0.6, variant)
    assert threshold > 0.6  # the variant's own scale would flag more at the reference's threshold
    for kind, rate in variant.fpr(threshold).items():
        assert rate <= reference.fpr(0.6)[kind]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=60),
    st.lists(st.floats(0, 1), min_size=1, max_size=60),
    st.floats(0.05, 0.95),
)
def test_a_head_matched_to_itself_keeps_its_rates(
    ordinary: list[float], alarming: list[float], t: float
) -> None:
    scores = _scores(ordinary, alarming, [1.0])
    matched = op.matched_threshold(scores, t, scores)
    assert matched <= t + 1e-6  # never stricter than the reference's own threshold
    for kind, rate in scores.fpr(matched).items():
        assert rate <= scores.fpr(t)[kind] + 1e-12


def test_misaligned_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="aligned"):
        op.KindScores.of(np.array([0.1, 0.2]), np.array([0, 0]), ["written_ordinary"])
