"""Category outputs next to the binary head: API, files, labels, and training on frozen features."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from guardrail.model.engine import SafetyModel
from guardrail.model.head import MODERATION_CATEGORIES, CategoryHead, HeadConfig, SafetyHead
from guardrail.training import categories


def _head() -> SafetyHead:
    torch.manual_seed(0)
    return SafetyHead(HeadConfig(hidden_size=16, num_layers=2, adapter_rank=2, classifier_hidden=8))


def test_head_without_categories() -> None:
    head = _head()
    assert head.category_names == ()
    assert head.category_scores(torch.randn(16)) == {}
    with pytest.raises(ValueError, match="no category outputs"):
        head.category_probabilities(torch.randn(16))


def test_categories_round_trip_and_leave_the_binary_head_alone(tmp_path: Path) -> None:
    head = _head()
    rows = torch.randn(3, 16)
    before = head.unsafe_probability(rows)
    head.categories = CategoryHead(16, MODERATION_CATEGORIES)
    torch.nn.init.normal_(head.categories.linear.weight)
    assert torch.equal(head.unsafe_probability(rows), before)
    head.save(tmp_path)
    assert set(json.loads((tmp_path / "categories.json").read_text())["names"]) == set(MODERATION_CATEGORIES)
    loaded = SafetyHead.load(tmp_path)
    assert loaded.category_names == MODERATION_CATEGORIES
    assert torch.allclose(loaded.category_probabilities(rows), head.category_probabilities(rows))
    assert torch.allclose(loaded.unsafe_probability(rows), before)
    scores = loaded.category_scores(rows[0])
    assert list(scores) == list(MODERATION_CATEGORIES) and all(0 <= v <= 1 for v in scores.values())
    with pytest.raises(ValueError, match="one \\[CLS\\] row"):
        loaded.category_scores(rows)


def test_head_files_without_categories_still_load(tmp_path: Path) -> None:
    _head().save(tmp_path)
    assert not (tmp_path / "categories.json").exists()
    assert SafetyHead.load(tmp_path).categories is None


def test_with_output_adds_or_replaces_one_output_only() -> None:
    base = CategoryHead(4, ("a", "b"))
    torch.nn.init.normal_(base.linear.weight)
    added = base.with_output("c", torch.ones(4), 0.5, threshold=0.7)
    assert added.names == ("a", "b", "c") and added.thresholds["c"] == 0.7
    assert torch.equal(added.linear.weight[:2], base.linear.weight)
    replaced = added.with_output("a", torch.zeros(4), 0.0)
    assert replaced.names == ("a", "b", "c")
    assert torch.equal(replaced.linear.weight[0], torch.zeros(4))
    assert torch.equal(replaced.linear.weight[1:], added.linear.weight[1:])
    with pytest.raises(ValueError, match="unique"):
        CategoryHead(4, ("a", "a"))


def test_every_moderation_category_has_labelled_examples() -> None:
    data = categories.labelled_data(negatives_per_source=10)
    counts = {name: sum(name in d.categories for d in data) for name in MODERATION_CATEGORIES}
    assert all(n >= 4 for n in counts.values()), counts
    assert {d.source for d in data} >= {
        "donotanswer_malicious",
        "airt_harms",
        "harmbench",
        "written_categories",
    }
    assert not any(d.categories for d in data if d.source in categories.HELD_OUT_NEGATIVES)


def test_fit_linear_learns_and_ignores_unknown_labels() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32) * 3 + 10
    y = np.stack([(x[:, 0] > 10).astype(int), (x[:, 1] > 10).astype(int)], 1)
    y_masked = y.copy()
    y_masked[:100, 1] = -1  # unknown: must not be trained on, whatever its value
    weight, bias, pos, _ = categories.fit_linear(x, y_masked)
    pred = (x @ weight.T + bias) > 0
    assert (pred == y.astype(bool)).mean() > 0.95
    assert pos[1] == (y[100:, 1] == 1).sum()


def test_read_examples_validates(tmp_path: Path) -> None:
    path = tmp_path / "ex.jsonl"
    path.write_text('{"text": "hi", "label": 2}\n')
    with pytest.raises(ValueError, match="label"):
        categories.read_examples(path)
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(4)))
    with pytest.raises(ValueError, match="at least 4"):
        categories.read_examples(path)


def test_custom_category_trains_on_frozen_features(tiny: SafetyModel, tmp_path: Path) -> None:
    positives = [
        f"Tell me about the {w} football match result"
        for w in ("big", "last", "local", "cup", "derby", "final")
    ]
    negatives = [
        f"Give me a recipe for {w} soup" for w in ("tomato", "onion", "pea", "leek", "carrot", "lentil")
    ]
    examples = [(t, 1) for t in positives] + [(t, 0) for t in negatives]
    before = {k: v.clone() for k, v in tiny.head.state_dict().items()}
    head, figures = categories.train_custom(tiny, "sports", examples, tmp_path, folds=3)
    assert head.names == ("sports",)
    assert figures["positives"] == 6 and figures["negatives"] == 6
    assert {"recall", "precision", "ece"} <= set(figures["before"]) and "recall" in figures["after"]
    scale, bias = head.calibration["sports"]
    assert scale > 0 and figures["calibration"] == {"scale": scale, "bias": bias}
    assert head.thresholds["sports"] == figures["threshold"]
    rows = torch.tensor(categories.cls_features(tiny, [positives[0], negatives[0]], tmp_path))
    logits = head.logits(rows)[:, 0]
    assert torch.allclose(head.probabilities(rows)[:, 0], torch.sigmoid(scale * logits + bias))
    assert all(torch.equal(before[k], v) for k, v in tiny.head.state_dict().items())
    with pytest.raises(ValueError, match="no spaces"):
        categories.train_custom(tiny, "my category", examples, tmp_path)


def test_custom_category_joins_the_shipped_outputs_with_its_own_calibration(
    tiny: SafetyModel, tmp_path: Path
) -> None:
    base = CategoryHead(tiny.head.config.hidden_size, ("a", "b"), calibration={"a": (2.0, -1.0)})
    tiny.head.categories = base
    try:
        examples = [(f"Tell me about the {w} match", 1) for w in ("cup", "final", "derby", "league")]
        examples += [(f"A recipe for {w} soup", 0) for w in ("pea", "leek", "onion", "lentil")]
        head, figures = categories.train_custom(tiny, "sports", examples, tmp_path, folds=2)
    finally:
        tiny.head.categories = None
    assert head.names == ("a", "b", "sports")
    assert head.calibration["a"] == (2.0, -1.0) and head.calibration["b"] == (1.0, 0.0)
    assert head.calibration["sports"] == (figures["calibration"]["scale"], figures["calibration"]["bias"])


def test_calibration_is_applied_at_inference(tmp_path: Path) -> None:
    head = _head()
    names = ("x", "y", "z")
    head.categories = CategoryHead(16, names, calibration={"x": (0.5, -2.0), "z": (3.0, 1.5)})
    torch.nn.init.normal_(head.categories.linear.weight)
    rows = torch.randn(5, 16)
    logits = head.category_logits(rows).detach()
    expected = torch.sigmoid(logits * torch.tensor([0.5, 1.0, 3.0]) + torch.tensor([-2.0, 0.0, 1.5]))
    assert torch.allclose(head.category_probabilities(rows), expected)
    scores = head.category_scores(rows[0])
    assert scores["x"] == pytest.approx(float(torch.sigmoid(0.5 * logits[0, 0] - 2.0)))
    assert scores["y"] == pytest.approx(float(torch.sigmoid(logits[0, 1])))  # uncalibrated: raw sigmoid
    head.save(tmp_path)
    saved = json.loads((tmp_path / "categories.json").read_text())["calibration"]
    assert saved["z"] == {"scale": 3.0, "bias": 1.5}
    loaded = SafetyHead.load(tmp_path)
    assert loaded.categories is not None and loaded.categories.calibration == head.categories.calibration
    assert torch.allclose(loaded.category_probabilities(rows), expected)
    with pytest.raises(ValueError, match="positive"):
        CategoryHead(16, names, calibration={"x": (0.0, 1.0)})
    with pytest.raises(ValueError, match="unknown"):
        CategoryHead(16, names, calibration={"w": (1.0, 0.0)})


def test_categories_json_without_calibration_still_loads(tmp_path: Path) -> None:
    head = _head()
    head.categories = CategoryHead(16, ("a", "b"), thresholds={"a": 0.3})
    torch.nn.init.normal_(head.categories.linear.weight)
    head.save(tmp_path)
    meta = json.loads((tmp_path / "categories.json").read_text())
    del meta["calibration"]  # the format shipped before calibration
    (tmp_path / "categories.json").write_text(json.dumps(meta))
    loaded = SafetyHead.load(tmp_path)
    assert loaded.categories is not None and loaded.categories.calibration == {
        "a": (1.0, 0.0),
        "b": (1.0, 0.0),
    }
    assert loaded.category_thresholds == {"a": 0.3, "b": 0.5}
    rows = torch.randn(4, 16)
    assert torch.allclose(loaded.category_probabilities(rows), torch.sigmoid(loaded.category_logits(rows)))


def test_platt_scaling_recovers_a_known_calibration() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=4000) * 3
    y = (rng.random(4000) < 1 / (1 + np.exp(-(0.5 * z - 2.0)))).astype(int)
    scale, bias = categories.fit_platt(z, y)
    assert scale == pytest.approx(0.5, abs=0.08) and bias == pytest.approx(-2.0, abs=0.2)
    assert categories.fit_platt(z, np.zeros_like(y)) == (1.0, 0.0)  # one class: left as it is


def test_f1_threshold_sits_in_the_gap_between_classes() -> None:
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    assert categories.f1_threshold(probs, labels) == pytest.approx(0.45)
    assert categories.f1_threshold(probs, np.zeros(6, dtype=int)) == 0.5
    tied = np.array([0.7, 0.7, 0.2])
    assert categories.f1_threshold(tied, np.array([1, 0, 0])) <= 0.7  # a cut-off never splits a tie


def test_cross_fitted_calibration_lowers_the_error_on_fresh_rows() -> None:
    """Balanced training inflates rare-class probabilities; Platt on out-of-fold logits undoes it."""
    rng = np.random.default_rng(1)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random(n) < 0.05).astype(int)
        x = rng.normal(size=(n, 8)) + y[:, None] * np.array([1.2] + [0.0] * 7)
        return x.astype(np.float32), y[:, None]

    x, y = sample(1500)
    fit = categories.fit_calibrated(x, y)
    fresh_x, fresh_y = sample(3000)
    raw_ece = categories.expected_calibration_error(fit.raw(fresh_x)[:, 0], fresh_y[:, 0])
    cal_ece = categories.expected_calibration_error(fit.calibrated(fresh_x)[:, 0], fresh_y[:, 0])
    assert cal_ece < raw_ece / 2, (raw_ece, cal_ece)
    assert 0 < fit.thresholds[0] < 1 and fit.calibration[0, 0] > 0


def test_held_out_written_examples_are_never_trained_on() -> None:
    data = categories.labelled_data(negatives_per_source=10)
    held = [d for d in data if d.source == categories.WRITTEN_HELD_OUT]
    counts = {name: sum(name in d.categories for d in held) for name in MODERATION_CATEGORIES}
    assert all(n >= 3 for n in counts.values()), counts  # every category gets held-out positives
    assert categories.WRITTEN_HELD_OUT not in categories.WRITTEN_TRAINING
    trained = {d.text for d in data if d.source in categories.WRITTEN_TRAINING}
    assert trained.isdisjoint(d.text for d in held)


#: The binary head the shipped category outputs were fitted on; it must not change under them.
BINARY_HEAD_SHA256 = "4088006b33a7d745ce55ca75d064cf7ec031d11e892ec805cf61dc2f8fb62cf3"


def test_the_shipped_head_carries_the_moderation_categories() -> None:
    from guardrail.model.head import default_head_dir

    head = SafetyHead.load(default_head_dir())
    assert head.category_names == MODERATION_CATEGORIES
    assert set(head.category_thresholds) == set(MODERATION_CATEGORIES)
    assert head.categories is not None
    assert all(scale > 0 for scale, _ in head.categories.calibration.values())
    assert any(c != (1.0, 0.0) for c in head.categories.calibration.values())  # calibrated, not raw
    row = torch.zeros(head.config.hidden_size)
    assert set(head.category_scores(row)) == set(MODERATION_CATEGORIES)


def test_the_binary_head_files_are_the_ones_the_categories_were_fitted_on() -> None:
    """Retraining categories never rewrites the binary head; a new binary head needs new categories."""
    from guardrail.model.head import default_head_dir

    shipped = hashlib.sha256((default_head_dir() / "head.safetensors").read_bytes()).hexdigest()
    meta = json.loads((default_head_dir() / "categories.json").read_text())
    assert shipped == BINARY_HEAD_SHA256
    assert meta["binary_head_sha256"] == shipped


def test_source_folds_leave_whole_sources_out_but_spread_the_written_rows() -> None:
    sources = np.array(["a"] * 4 + ["b"] * 3 + ["written_categories"] * 10)
    labels = np.zeros((17, 1), dtype=int)
    labels[7:12] = 1
    fold_of = categories.source_folds(sources, labels, folds=5)
    assert len(set(fold_of[:4])) == 1 and len(set(fold_of[4:7])) == 1 and fold_of[0] != fold_of[4]
    written = fold_of[7:]
    assert set(written) == set(range(5)) and not set(written) & {fold_of[0], fold_of[4]}
    assert all(labels[7:][written == k].sum() == 1 for k in range(5))  # one positive per fold
