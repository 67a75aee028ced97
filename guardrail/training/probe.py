"""Score an existing head on the generated probes: rewordings per style, hard negatives per kind,
written answers per kind, and the held-out groups, without training anything.

It tells which lever a head needs before a training run is spent on it: a style whose
rewordings it misses, a kind of alarming request it flags, harm it forgets.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.model.engine import SafetyModel
from guardrail.model.head import SafetyHead
from guardrail.model.loading import cache_dir, load_model
from guardrail.training import kvstore, metrics
from guardrail.training.kvstore import Shard
from guardrail.training.recipe import Recipe, build_groups, is_held_out, split_validation
from guardrail.training.trainer import score


def _probed(group: str) -> bool:
    base = group.split("#")[0]
    return is_held_out(group) or base.startswith(("aug:", "hard_negative", "resp:"))

#: Topical counterparts the probe scores (benign requests on harm's topics, per frame).
PROBE_TOPICAL = 600


def probe(
    head_dir: Path, output: Path, *, model: str | None = None, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """`limit`: at most this many samples per generated group, and held-out prompt groups skipped
    (their figures are in the head's own report), for a quick look on a busy machine."""
    loaded = load_model(model)
    head = SafetyHead.load(head_dir)
    safety = SafetyModel(loaded.model, loaded.tokenizer, head, name=loaded.name)
    recipe = Recipe(seed=seed, n_traj_harmful=0, n_traj_benign=0, topical_negatives=PROBE_TOPICAL)
    groups = split_validation(build_groups(loaded.tokenizer, lambda plans, _: plans, recipe), seed)
    groups = {name: samples for name, samples in groups.items() if _probed(name)}
    if limit is not None:
        rng = random.Random(seed)
        groups = {
            name: rng.sample(samples, min(limit, len(samples)))
            for name, samples in groups.items()
            if not (is_held_out(name) and not name.startswith("resp_heldout:"))
            and not name.startswith("resp:")
        }
    shards = kvstore.build(safety, cache_dir() / "train" / "kv" / loaded.name, groups)
    threshold = float(head.config.threshold)
    report: dict[str, Any] = {"head": head_dir.name, "threshold": threshold}
    report["held_out_groups"] = _by(
        safety,
        [s for s in shards if is_held_out(s.group) and not s.group.startswith("resp_")],
        threshold,
        key=lambda shard, _: shard.group.split("|")[0],
    )
    report["rewordings_by_style"] = _by(
        safety,
        [s for s in shards if s.group.startswith("aug:reword")],
        threshold,
        key=lambda _, sample: sample.family or "?",
    )
    report["rewordings_by_source"] = _by(
        safety,
        [s for s in shards if s.group.startswith("aug:reword")],
        threshold,
        key=lambda shard, _: shard.group.split("|")[-1].split("#")[0],
    )
    report["hard_negatives_by_kind"] = _by(
        safety,
        [s for s in shards if s.group.startswith("hard_negative")],
        threshold,
        key=lambda _, sample: sample.family or "?",
    )
    report["topical_by_style"] = _by(
        safety,
        [s for s in shards if s.group.startswith("aug:topical")],
        threshold,
        key=lambda _, sample: sample.family or "?",
    )
    answers: dict[str, list[Shard]] = defaultdict(list)
    for shard in shards:
        if shard.group.startswith(("resp:", "resp_heldout:")):
            answers[shard.group.split("|")[0].split("#")[0]].append(shard)
    report["answers"] = {
        kind: metrics.answer_metrics(score(safety, items), threshold)
        for kind, items in sorted(answers.items())
    }
    output.mkdir(parents=True, exist_ok=True)
    (output / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _by(safety: SafetyModel, shards: list[Shard], threshold: float, key: Any) -> dict[str, Any]:
    """Prompt-check figures per key(shard, sample)."""
    buckets: dict[str, tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    for shard in shards:
        scored = score(safety, [shard])
        for sample, s, label in zip(shard.samples, scored.prompt_scores, scored.prompt_labels, strict=True):
            scores, labels = buckets[key(shard, sample)]
            scores.append(float(s))
            labels.append(int(label))
    out = {}
    for name, (scores, labels) in sorted(buckets.items()):
        row = metrics.prompt_metrics(np.array(scores), np.array(labels), threshold)
        row["mean_score"] = float(np.mean(scores))
        out[name] = row
    return out


def finetune(
    head_dir: Path,
    output: Path,
    *,
    model: str | None = None,
    seed: int = 0,
    epochs: int = 1,
    lr: float = 3e-4,
    benign_rewordings: float = 0.0,
) -> dict[str, Any]:
    """Continue training an existing head on the generated data only (rewordings, hard negatives,
    written answers), then score both heads on the held-out groups at the existing threshold.

    An experiment, not a shipping recipe: it cannot have leave-one-source-out folds (the start
    point has seen every source), and nothing of the original data is replayed.
    """
    from guardrail.training.trainer import TrainConfig, train

    loaded = load_model(model)
    head = SafetyHead.load(head_dir)
    head.categories = None  # only the binary path is trained here
    safety = SafetyModel(loaded.model, loaded.tokenizer, head, name=loaded.name)
    recipe = Recipe(
        seed=seed, n_traj_harmful=0, n_traj_benign=0, benign_rewordings_per_request=benign_rewordings
    )
    groups = split_validation(build_groups(loaded.tokenizer, lambda plans, _: plans, recipe), seed)
    wanted = {
        name: samples
        for name, samples in groups.items()
        if is_held_out(name) or (name.startswith(("aug:", "hard_negative", "resp:")) and "#val" not in name)
    }
    wanted = dict(sorted(wanted.items(), key=lambda kv: not is_held_out(kv[0])))
    shards = kvstore.build(safety, cache_dir() / "train" / "kv" / loaded.name, wanted)
    held = [s for s in shards if is_held_out(s.group)]
    train_shards = [s for s in shards if not is_held_out(s.group)]
    threshold = float(head.config.threshold)
    report: dict[str, Any] = {
        "head": head_dir.name,
        "threshold": threshold,
        "epochs": epochs,
        "lr": lr,
        "benign_rewordings": benign_rewordings,
        "trained_groups": _counts(train_shards),
    }
    report["before"] = _held_figures(safety, held, threshold)
    start = {k: v.clone() for k, v in head.binary_state_dict().items()}
    report["losses"] = train(
        safety, train_shards, TrainConfig(epochs=epochs, lr=lr, seed=seed, init_state=start)
    )
    report["after"] = _held_figures(safety, held, threshold)
    output.mkdir(parents=True, exist_ok=True)
    safety.head.save(output, extra={"threshold": threshold, "experiment": "finetune on generated data"})
    (output / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _held_figures(safety: SafetyModel, held: list[Shard], threshold: float) -> dict[str, Any]:
    prompts = [s for s in held if not s.group.startswith("resp_heldout:")]
    out = _by(safety, prompts, threshold, key=lambda shard, _: shard.group.split("|")[0])
    answers: dict[str, list[Shard]] = defaultdict(list)
    for shard in held:
        if shard.group.startswith("resp_heldout:"):
            answers[shard.group.split("|")[0]].append(shard)
    for kind, items in sorted(answers.items()):
        out[kind] = metrics.answer_metrics(score(safety, items), threshold)
    scored = score(safety, prompts)
    out["auroc"] = metrics.auroc(scored.prompt_scores, scored.prompt_labels)
    return out


def _counts(shards: list[Shard]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for shard in shards:
        counts[shard.group] += len(shard.samples)
    return dict(counts)
