"""`guardrail train`: data -> trajectories -> cached keys/values -> head -> report."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.model.engine import SafetyModel
from guardrail.model.head import HeadConfig, SafetyHead, default_head_dir
from guardrail.model.loading import cache_dir, load_model
from guardrail.training import kvstore, metrics
from guardrail.training import operating_point as op
from guardrail.training import trajectories as traj
from guardrail.training.kvstore import Shard
from guardrail.training.recipe import (
    HELD_OUT_BENIGN,
    HELD_OUT_FAMILIES,
    Recipe,
    build_groups,
    excludes,
    is_held_out,
    split_validation,
)
from guardrail.training.samples import Sample
from guardrail.training.sources import source_report
from guardrail.training.trainer import TrainConfig, score, train

#: Leave-one-source-out folds: each trains without these and reports recall on them.
#: Weakest first, so that the folds that matter most land first when time is short.
LOSO_SOURCES = ("donotanswer_malicious", "written_malicious_varied", "airt_harms", "harmbench", "advbench")


def _subsample(groups: dict[str, list[Sample]], per_group: int, seed: int) -> dict[str, list[Sample]]:
    rng = random.Random(seed)
    return {k: rng.sample(v, min(per_group, len(v))) for k, v in groups.items()}


def run(
    output: Path,
    *,
    model: str | None = None,
    seed: int = 0,
    epochs: int = 4,
    folds: bool = True,
    quick: bool = False,
    compare: Path | None = None,
    generated_answers: bool = True,
    benign_rewordings: float = 0.0,
    topical_negatives: int = 0,
    adapter_rank: int = HeadConfig.adapter_rank,
    train_without: Sequence[str] = (),
) -> dict[str, Any]:
    """Train, calibrate and evaluate a head; `train_without`: group prefixes left out of training
    but kept in validation, so an ablation is judged on the same rows as the full recipe."""
    started = time.time()
    loaded = load_model(model)
    config = loaded.model.config
    head = SafetyHead(
        HeadConfig(
            hidden_size=config.hidden_size,
            num_layers=config.num_hidden_layers,
            base_model=loaded.name,
            adapter_rank=adapter_rank,
        )
    )
    safety = SafetyModel(loaded.model, loaded.tokenizer, head, name=loaded.name)
    recipe = Recipe(
        seed=seed, benign_rewordings_per_request=benign_rewordings, topical_negatives=topical_negatives
    )
    if quick:
        recipe.n_traj_harmful = recipe.n_traj_benign = 16
    if not generated_answers:
        recipe.n_traj_harmful = recipe.n_traj_benign = 0
    work = cache_dir() / "train"

    def generate(plans: list[traj.Trajectory], max_new: int) -> list[traj.Trajectory]:
        key = traj.cache_key(plans, loaded.name, max_new)
        return traj.generate(
            loaded.model,
            loaded.tokenizer,
            plans,
            max_new_tokens=max_new,
            cache_file=work / f"trajectories-{key}.jsonl",
        )

    groups = build_groups(loaded.tokenizer, generate, recipe)
    if quick:
        groups = _subsample(groups, 12, seed)
    groups = split_validation(groups, seed)
    # Held-out groups and the generated data first: on a busy machine the figures that decide
    # a run (and the diagnostics of the shipped head) are computable before the rest is cached.
    groups = dict(sorted(groups.items(), key=lambda kv: _kv_priority(kv[0])))
    shards = kvstore.build(safety, work / "kv" / loaded.name, groups)

    train_shards = [
        s
        for s in shards
        if not is_held_out(s.group) and "#val" not in s.group and not s.group.startswith(tuple(train_without))
    ]
    val_shards = [s for s in shards if "#val" in s.group]
    held_shards = [s for s in shards if is_held_out(s.group) and not _is_response_set(s.group)]
    answer_shards = [s for s in shards if is_held_out(s.group) and _is_response_set(s.group)]
    compared: dict[str, Any] | None = None
    compare = compare if compare is not None else (None if quick else default_head_dir())
    if compare is not None and (compare / "head.json").is_file():
        # The head we would replace, scored on exactly the same held-out shards.
        compared = _evaluate_existing(safety, compare, held_shards, answer_shards)
    cfg = TrainConfig(epochs=1 if quick else epochs, seed=seed)
    losses = train(safety, train_shards, cfg, desc="head")

    val = score(safety, val_shards)
    val_kinds = op.KindScores.scored(val, val_shards)
    threshold = op.per_kind_threshold(val_kinds)
    report: dict[str, Any] = {
        "recipe": {k: v for k, v in asdict(recipe).items() if k != "groups"},
        "trained_without": list(train_without),
        "model": loaded.name,
        "seed": seed,
        "epochs": cfg.epochs,
        "losses": losses,
        "threshold": threshold,
        "threshold_rule": op.PER_KIND_RULE,
        "threshold_by_kind": op.summary(val_kinds, threshold),
        "held_out": {"benign": HELD_OUT_BENIGN, "jailbreak_families": list(HELD_OUT_FAMILIES)},
        "sources": source_report(),
        "groups": {g: sum(len(s.samples) for s in shards if s.group == g) for g in sorted(groups)},
    }
    report["validation"] = metrics.prompt_metrics(val.prompt_scores, val.prompt_labels, threshold)
    report["validation_checks"] = metrics.check_metrics(val.check_scores, val.check_labels, threshold)
    report["held_out_groups"] = _per_group(safety, held_shards, threshold)
    held = score(safety, held_shards)
    report["held_out_auroc"] = metrics.auroc(held.prompt_scores, held.prompt_labels)
    report["response_held_out"] = _answers(safety, answer_shards, threshold)
    if compared is not None:
        report["compared_head"] = compared
    report["baselines"] = metrics.baselines(
        score(safety, train_shards), held, [s.group for s in held_shards for _ in s.samples], threshold
    )
    output.mkdir(parents=True, exist_ok=True)
    head_extra = {"threshold": threshold, "trained_on": sorted({s.group.split("|")[0] for s in train_shards})}
    safety.head.config.threshold = threshold
    safety.head.save(output, extra={"threshold": threshold, "report": "report.json"})
    metrics.plots(output, held, val, safety, report)
    report["head_extra"] = head_extra
    _write(output, report, started)
    if folds and not quick:
        # Folds reuse the model's head in place, so the shipped weights are kept aside.
        shipped = {k: v.clone() for k, v in safety.head.state_dict().items()}
        fold_cfg = TrainConfig(epochs=max(1, cfg.epochs // 2), seed=seed)
        report["leave_one_source_out_epochs"] = fold_cfg.epochs
        report["leave_one_source_out"] = {}
        for source, row in _folds(safety, shards, fold_cfg):
            report["leave_one_source_out"][source] = row
            _write(output, report, started)  # every finished fold lands on disk at once
        safety.head.load_state_dict(shipped)
        _write(output, report, started)
    return report


def _write(output: Path, report: dict[str, Any], started: float) -> None:
    report["train_minutes"] = round((time.time() - started) / 60, 1)
    (output / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (output / "report.md").write_text(metrics.markdown(report))


def _per_group(safety: SafetyModel, shards: list[Shard], threshold: float) -> dict[str, Any]:
    by_group: dict[str, list[Shard]] = {}
    for shard in shards:
        by_group.setdefault(shard.group.split("|")[0], []).append(shard)
    out = {}
    for group, items in sorted(by_group.items()):
        scored = score(safety, items)
        out[group] = metrics.prompt_metrics(scored.prompt_scores, scored.prompt_labels, threshold)
    return out


def _kv_priority(group: str) -> int:
    if is_held_out(group):
        return 0
    return 1 if group.startswith(("aug:", "hard_negative", "resp:")) else 2


def _is_response_set(group: str) -> bool:
    return group.startswith("resp_heldout:")


def _answers(safety: SafetyModel, shards: list[Shard], threshold: float) -> dict[str, Any]:
    """Held-out written answers, per kind: flagged at the end, cut, caught."""
    by_kind: dict[str, list[Shard]] = {}
    for shard in shards:
        by_kind.setdefault(shard.group.split("|")[0].split(":", 1)[1], []).append(shard)
    out = {}
    for kind, items in sorted(by_kind.items()):
        out[kind] = metrics.answer_metrics(score(safety, items), threshold)
    return out


def _evaluate_existing(
    safety: SafetyModel, directory: Path, held_shards: list[Shard], answer_shards: list[Shard]
) -> dict[str, Any]:
    """Figures of an existing head (the shipped one by default) on this run's held-out shards.

    The head is read by its own `SafetyModel` on the same language model, so it may differ from
    the head being trained (another adapter rank) and leaves that head untouched.
    """
    existing = SafetyHead.load(directory)
    existing.categories = None
    threshold = float(existing.config.threshold)
    with safety.with_head(existing) as other:
        held = score(other, held_shards)
        return {
            "directory": directory.name,
            "threshold": threshold,
            "held_out_groups": _per_group(other, held_shards, threshold),
            "held_out_auroc": metrics.auroc(held.prompt_scores, held.prompt_labels),
            "response_held_out": _answers(other, answer_shards, threshold),
        }


def _folds(
    safety: SafetyModel, shards: list[Shard], cfg: TrainConfig
) -> Iterator[tuple[str, dict[str, Any]]]:
    for source in LOSO_SOURCES:
        train_shards = [
            s
            for s in shards
            if not is_held_out(s.group) and "#val" not in s.group and not excludes(s.group, source)
        ]
        val_shards = [s for s in shards if "#val" in s.group and not excludes(s.group, source)]
        test_shards = [s for s in shards if s.group.split("#")[0] == source]
        train(safety, train_shards, TrainConfig(epochs=cfg.epochs, seed=cfg.seed), desc=f"fold -{source}")
        val = score(safety, val_shards)
        threshold = op.per_kind_threshold(op.KindScores.scored(val, val_shards))
        test = score(safety, test_shards)
        row = metrics.prompt_metrics(test.prompt_scores, test.prompt_labels, threshold)
        row["threshold"] = threshold
        yield source, row


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)
