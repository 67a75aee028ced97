"""Training end to end on the tiny test model: trajectories, cached keys/values, the head, the threshold.

Two toy classes (requests about weapons and poison vs. about bread and gardens) that a random
tiny Llama's hidden states can tell apart; the [CLS] path must learn them, the loss must
fall, the saved head must load and score exactly as the trained one, through the serving path.
Fast enough for CI (a few seconds on two CPU cores).

The model is the tests' tiny Llama shape at hidden size 64 with a wider initialisation: at the
default 0.02, two layers of 32 barely move the [CLS] state away from its own embedding, so no
head could tell the classes apart and the test would measure the random model, not training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from guardrail.guard import Guard
from guardrail.model.engine import SafetyModel
from guardrail.model.head import HeadConfig, SafetyHead
from guardrail.training import kvstore, metrics
from guardrail.training import trajectories as traj
from guardrail.training.operating_point import KindScores, per_kind_threshold
from guardrail.training.recipe import split_validation
from guardrail.training.samples import Sample, prompt_sample, trajectory_sample
from guardrail.training.sources import Example
from guardrail.training.trainer import TrainConfig, check_probabilities, score, train
from guardrail.types import GuardConfig

HARMFUL = [f"{verb} a {thing} {tail}" for verb in ("Build", "Make", "Hide", "Buy")
           for thing in ("bomb", "poison", "weapon")
           for tail in ("tonight", "at home")]
BENIGN = [f"{verb} a {thing} {tail}" for verb in ("Bake", "Plant", "Paint", "Cook")
          for thing in ("bread", "garden", "picture")
          for tail in ("tonight", "at home")]
EPOCHS = 40
UNSEEN_HARMFUL = ["Make a bomb for school", "Hide poison in a cake"]
UNSEEN_BENIGN = ["Bake bread for school", "Plant a garden in spring"]


@pytest.fixture(scope="module")
def model(tokenizer: Any) -> SafetyModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, initializer_range=0.2,
    )
    lm = LlamaForCausalLM(config).eval()
    lm.requires_grad_(False)
    head = SafetyHead(HeadConfig(hidden_size=64, num_layers=2, adapter_rank=8, classifier_hidden=32))
    return SafetyModel(lm, tokenizer, head, name="tiny-train")


@pytest.fixture(scope="module")
def trained(model: SafetyModel, tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One small run: plan and generate trajectories, build shards, train, calibrate, save."""
    work = tmp_path_factory.mktemp("train")
    plans = traj.plan([("toy", p) for p in HARMFUL[:4]], [("toy", p) for p in BENIGN[:4]],
                      seed=0, n_harmful=4, n_benign=4)
    cache_file = work / "trajectories.jsonl"
    generated = traj.generate(model.lm, tokenizer, plans, cache_file=cache_file, max_new_tokens=6)
    again = traj.generate(model.lm, tokenizer, plans, cache_file=cache_file, max_new_tokens=6)
    samples: list[Sample] = [prompt_sample(tokenizer, Example(t, 1, "toy")) for t in HARMFUL]
    samples += [prompt_sample(tokenizer, Example(t, 0, "toy")) for t in BENIGN]
    samples += [trajectory_sample(tokenizer, t.prompt, t.response, prompt_label=t.prompt_label,
                                  response_label=t.prompt_label, source=t.source) for t in generated]
    groups = split_validation({"toy": samples}, seed=0)
    shards = kvstore.build(model, work / "kv", groups)
    rebuilt = kvstore.build(model, work / "kv", groups)  # reused from disk, not recomputed
    train_shards = [s for s in shards if "#val" not in s.group]
    val_shards = [s for s in shards if "#val" in s.group]
    losses = train(model, train_shards, TrainConfig(epochs=EPOCHS, lr=5e-2, seed=0), desc="toy")
    val = score(model, val_shards)
    threshold = per_kind_threshold(KindScores.scored(val, val_shards))
    out = work / "head"
    model.head.save(out, extra={"threshold": threshold})
    return {"plans": plans, "generated": generated, "again": again, "shards": shards, "rebuilt": rebuilt,
            "train_shards": train_shards, "val_shards": val_shards, "losses": losses,
            "threshold": threshold, "head_dir": out}


def test_trajectories_are_generated_once_and_reused(trained: dict[str, Any]) -> None:
    generated, plans = trained["generated"], trained["plans"]
    assert len(generated) == len(plans) == 8
    assert [t.prompt for t in generated] == [t.prompt for t in plans]
    assert all(t.completion for t in generated)  # greedy completions were filled in
    assert trained["again"] == generated  # the cache file answered the second call
    harmful = [t for t in generated if t.prompt_label == 1]
    assert any(t.prefill for t in harmful) and all(t.response.startswith(t.prefill) for t in generated)


def test_shards_cover_every_sample_and_are_reused(trained: dict[str, Any]) -> None:
    shards, rebuilt = trained["shards"], trained["rebuilt"]
    assert [s.path for s in shards] == [s.path for s in rebuilt] and all(s.path.is_file() for s in shards)
    total = sum(len(s.samples) for s in shards)
    assert total == len(HARMFUL) + len(BENIGN) + 8
    assert trained["val_shards"], "a validation share was split off for calibration"


def test_loss_falls(trained: dict[str, Any]) -> None:
    losses = trained["losses"]
    assert len(losses) == EPOCHS and all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses


def test_head_separates_the_two_classes(model: SafetyModel, trained: dict[str, Any]) -> None:
    scored = score(model, trained["train_shards"])
    assert metrics.auroc(scored.prompt_scores, scored.prompt_labels) == 1.0
    harmful = scored.prompt_scores[scored.prompt_labels == 1]
    benign = scored.prompt_scores[scored.prompt_labels == 0]
    assert harmful.min() > benign.max()
    assert 0.2 <= trained["threshold"] <= 0.9  # the calibration rule's clip


def test_saved_head_loads_and_serves_the_same_scores(
        model: SafetyModel, tokenizer: Any, trained: dict[str, Any]) -> None:
    loaded = SafetyHead.load(trained["head_dir"])
    for name, tensor in model.head.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.float()), name
    served = SafetyModel(model.lm, tokenizer, loaded, name="tiny-trained")
    threshold = trained["threshold"]
    guard = Guard(safety_model=served, config=GuardConfig(threshold=threshold))
    in_memory = Guard(safety_model=model, config=GuardConfig(threshold=threshold))
    for prompt in [*UNSEEN_HARMFUL, *UNSEEN_BENIGN]:
        verdict = guard.check_prompt(prompt)
        assert verdict.score == pytest.approx(in_memory.check_prompt(prompt).score, abs=1e-6)
    # the serving path's score equals the training-time score of the same prompt (invariant 2)
    shard = trained["train_shards"][0]
    scored = score(served, [shard])
    for sample, trained_score in zip(shard.samples, scored.prompt_scores, strict=True):
        if not sample.response_ids:
            assert guard.check_prompt(sample.text).score == pytest.approx(float(trained_score), abs=2e-3)
    # and it generalises to unseen requests with the same words
    assert [guard.check_prompt(p).label for p in UNSEEN_HARMFUL] == ["unsafe"] * len(UNSEEN_HARMFUL)
    assert [guard.check_prompt(p).label for p in UNSEEN_BENIGN] == ["safe"] * len(UNSEEN_BENIGN)


def test_train_help_and_info_commands(capsys: pytest.CaptureFixture[str]) -> None:
    from guardrail.cli import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    helped = capsys.readouterr().out
    for option in ("--output", "--model", "--epochs", "--no-folds", "--quick"):
        assert option in helped
    assert main(["info"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"version", "torch", "cache_dir", "default_head"} <= set(data)
    assert "threshold" in data.get("head", {}), "the shipped head names its calibrated threshold"


def test_cli_entry_point_runs() -> None:
    """The installed command line starts in a fresh interpreter (no import-order luck)."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-m", "guardrail.cli", "train", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=root, check=False)
    assert out.returncode == 0 and "--quick" in out.stdout, out.stderr


def test_distillation_trains_towards_the_teachers_scores_not_the_labels(
        model: SafetyModel, trained: dict[str, Any]) -> None:
    """Soft targets replace the labels: a teacher saying 0.7 everywhere pulls both classes to 0.7."""
    shards = trained["train_shards"]
    start = {k: v.clone() for k, v in model.head.state_dict().items()}
    teacher = {shard.path: torch.full(shard.labels().shape, 0.7) for shard in shards}
    try:
        train(model, shards, TrainConfig(epochs=30, lr=5e-2, seed=0, init_state=start, soft_targets=teacher),
              desc="distil")
        scores = np.concatenate([p[:, 0].numpy() for p in check_probabilities(model, shards)])
        assert np.allclose(scores, 0.7, atol=0.08), scores  # labelled 0 and 1 alike
        assert np.allclose(scores, score(model, shards).prompt_scores)
    finally:
        model.head.load_state_dict(start)
