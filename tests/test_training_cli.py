"""`guardrail train` passes the recipe and capacity options through to the training run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from guardrail.model.head import HeadConfig, SafetyHead


def test_train_passes_topical_negatives_and_adapter_rank(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from guardrail.cli import main
    from guardrail.training import pipeline

    calls: list[dict[str, Any]] = []

    def fake_run(output: Path, **kw: Any) -> dict[str, Any]:
        calls.append(kw)
        return {"threshold": 0.5, "held_out_auroc": 1.0, "held_out_groups": {}}

    monkeypatch.setattr(pipeline, "run", fake_run)
    assert main(["train", "--output", str(tmp_path), "--no-folds"]) == 0
    assert (calls[-1]["topical_negatives"], calls[-1]["adapter_rank"]) == (0, HeadConfig.adapter_rank)
    options = ["--topical-negatives", "1200", "--adapter-rank", "32"]
    assert main(["train", "--output", str(tmp_path), *options]) == 0
    assert (calls[-1]["topical_negatives"], calls[-1]["adapter_rank"]) == (1200, 32)
    assert calls[-1]["train_without"] == ()
    options = ["--train-without", "aug:reword", "--train-without", "hard_negative"]
    assert main(["train", "--output", str(tmp_path), *options]) == 0
    assert calls[-1]["train_without"] == ("aug:reword", "hard_negative")


def test_a_head_of_another_rank_saves_and_loads_as_itself(tmp_path: Path) -> None:
    head = SafetyHead(HeadConfig(hidden_size=16, num_layers=2, adapter_rank=32))
    head.save(tmp_path)
    loaded = SafetyHead.load(tmp_path)
    assert loaded.config.adapter_rank == 32
    assert all(a.down is not None and a.down.out_features == 32 for a in loaded.adapters)
