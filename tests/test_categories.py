"""Category outputs next to the binary head: API, files, labels, and training on frozen features."""

from __future__ import annotations

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
    assert figures["positives"] == 6 and figures["negatives"] == 6 and "recall" in figures
    assert all(torch.equal(before[k], v) for k, v in tiny.head.state_dict().items())
    with pytest.raises(ValueError, match="no spaces"):
        categories.train_custom(tiny, "my category", examples, tmp_path)


def test_the_shipped_head_carries_the_moderation_categories() -> None:
    from guardrail.model.head import default_head_dir

    head = SafetyHead.load(default_head_dir())
    assert head.category_names == MODERATION_CATEGORIES
    assert set(head.category_thresholds) == set(MODERATION_CATEGORIES)
    row = torch.zeros(head.config.hidden_size)
    assert set(head.category_scores(row)) == set(MODERATION_CATEGORIES)
