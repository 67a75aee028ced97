"""Response-level figures of written answers, and which groups are cached and probed first."""

from __future__ import annotations

import numpy as np

from guardrail.training.metrics import answer_metrics, check_metrics
from guardrail.training.pipeline import _kv_priority
from guardrail.training.probe import _probed
from guardrail.training.trainer import Scored


def _scored(rows: list[list[float]], labels: list[list[int]]) -> Scored:
    return Scored(
        np.zeros(len(rows)), np.zeros(len(rows)), rows, labels, np.zeros((len(rows), 1)), [""] * len(rows)
    )


def test_harm_forgotten_at_the_end_is_not_flagged_at_the_end() -> None:
    # prompt check, then harm read (unsafe streak), then the score decays under a benign coda
    rows = [[0.1, 0.9, 0.95, 0.9, 0.4, 0.2], [0.1, 0.9, 0.9, 0.9, 0.9, 0.85]]
    labels = [[0, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]]
    out = answer_metrics(_scored(rows, labels), threshold=0.8)
    assert out["flagged_at_end"] == 0.5
    assert out["caught"] == 1.0
    assert out["cut_while_benign"] == 0.0


def test_cut_needs_tau_consecutive_unsafe_checks_on_benign_text() -> None:
    rows = [[0.1, 0.9, 0.1, 0.9, 0.1], [0.1, 0.9, 0.9, 0.9, 0.1]]
    labels = [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    out = answer_metrics(_scored(rows, labels), threshold=0.8, tau=3)
    assert out["cut_while_benign"] == 0.5
    assert "caught" not in out


def test_unlabelled_checks_are_left_out_of_check_metrics() -> None:
    out = check_metrics([[0.0, 0.9, 0.1]], [[0, -1, 0]], threshold=0.5)
    assert out["n"] == 1 and out["fpr"] == 0.0


def test_held_out_and_generated_groups_come_first() -> None:
    names = [
        "advbench",
        "aug:reword|advbench",
        "persistbench",
        "resp_heldout:long_benign",
        "hard_negative#val",
    ]
    assert sorted(names, key=_kv_priority)[:2] == ["persistbench", "resp_heldout:long_benign"]
    assert [n for n in names if _probed(n)] == names[1:]


def test_training_can_start_from_existing_weights(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from guardrail.training import kvstore
    from guardrail.training.samples import prompt_sample
    from guardrail.training.sources import Example
    from guardrail.training.trainer import TrainConfig, train

    samples = [prompt_sample(tiny.tokenizer, Example(f"request number {i}", i % 2, "s")) for i in range(6)]
    shards = kvstore.build(tiny, tmp_path, {"g": samples})
    start = {k: v.clone() for k, v in tiny.head.state_dict().items()}
    train(tiny, shards, TrainConfig(epochs=1, lr=1e-9, init_state=start))
    assert all(torch.allclose(start[k], v, atol=1e-5) for k, v in tiny.head.state_dict().items())
    train(tiny, shards, TrainConfig(epochs=1, lr=1e-9))  # a fresh head: the adapters restart at zero
    assert not torch.allclose(start["adapters.0.bias"], tiny.head.state_dict()["adapters.0.bias"])
