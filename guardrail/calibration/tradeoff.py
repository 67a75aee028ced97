"""Heads side by side at every threshold: where each rule puts them, and what that costs on held-out data.

`python -m guardrail.calibration.tradeoff --head guardrail/heads/smollm2-135m --head runs/head-r3
--output runs/tradeoff` (seconds once the training run's keys and values are cached).

Rebuilds the current recipe's validation split and held-out groups (benign same-frame
rewordings and topical counterparts on, generated answers off: what the head's second round
trained with), scores
each head's prompt checks from the cached fp32 keys and values, and writes `tradeoff.json`
and `tradeoff.png`: validation recall and per-kind false-positive rates, and held-out recall
and false-positive rates, over thresholds, with each head's shipped threshold and the
per-kind rule's threshold marked. The rule reads validation rows only; the held-out curves
show what a choice costs, they never make it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guardrail.model.engine import SafetyModel
from guardrail.model.head import SafetyHead
from guardrail.model.loading import cache_dir, load_model
from guardrail.training import kvstore
from guardrail.training import operating_point as op
from guardrail.training.recipe import Recipe, build_groups, is_held_out, split_validation
from guardrail.training.trainer import score
from guardrail.training.trajectories import Trajectory

THRESHOLDS = np.round(np.linspace(0.2, 0.98, 40), 3)


def _prompts_only(plans: list[Trajectory], _max_new: int) -> list[Trajectory]:
    return plans


GroupScores = dict[str, tuple[np.ndarray, np.ndarray]]


def _group_scores(safety: SafetyModel, shards: list[kvstore.Shard]) -> GroupScores:
    by_group: dict[str, list[kvstore.Shard]] = {}
    for shard in shards:
        by_group.setdefault(shard.group, []).append(shard)
    out = {}
    for group, items in by_group.items():
        scored = score(safety, items)
        out[group] = (scored.prompt_scores, scored.prompt_labels)
    return out


def _held_out_rates(scores: GroupScores, threshold: float) -> dict[str, float]:
    """Recall of each held-out malicious family, false-positive rate of each held-out benign source."""
    pooled: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for group, pair in scores.items():
        pooled.setdefault(group.split("|")[0], []).append(pair)
    out = {}
    for name, pairs in sorted(pooled.items()):
        s = np.concatenate([p[0] for p in pairs])
        labels = np.concatenate([p[1] for p in pairs])
        rows = s[labels == 1] if labels.any() else s[labels == 0]
        out[name] = float(np.mean(rows >= threshold))
    return out


def _at(val: op.KindScores, held: GroupScores, threshold: float) -> dict[str, Any]:
    return {**op.summary(val, threshold), "held_out": _held_out_rates(held, threshold)}


def run(heads: Sequence[Path], seed: int = 0, topical_negatives: int = 1200) -> dict[str, Any]:
    loaded = load_model(None)
    recipe = Recipe(
        seed=seed,
        n_traj_harmful=0,
        n_traj_benign=0,
        benign_rewordings_per_request=1.0,
        topical_negatives=topical_negatives,
    )
    groups = split_validation(build_groups(loaded.tokenizer, _prompts_only, recipe), seed)
    groups = {
        k: v
        for k, v in groups.items()
        if ("#val" in k or is_held_out(k)) and not k.startswith(("resp", "traj:"))
    }
    first = SafetyHead.load(heads[0])
    first.categories = None
    safety = SafetyModel(loaded.model, loaded.tokenizer, first, name=loaded.name)
    shards = kvstore.build(safety, kvstore.kv_root(cache_dir() / "train", safety), groups)
    report: dict[str, Any] = {"seed": seed, "thresholds": THRESHOLDS.tolist(), "heads": {}}
    safety.detach()
    for directory in heads:
        head = SafetyHead.load(directory)
        head.categories = None
        with safety.with_head(head) as own:  # heads may differ in adapter rank
            scores = _group_scores(own, shards)
        val_groups = [g for g in scores if "#val" in g]
        val = op.KindScores.of(
            np.concatenate([scores[g][0] for g in val_groups]),
            np.concatenate([scores[g][1] for g in val_groups]),
            [g for g in val_groups for _ in range(len(scores[g][0]))],
        )
        held = {g: v for g, v in scores.items() if "#val" not in g}
        marks = {"shipped": float(head.config.threshold), "per_kind_rule": op.per_kind_threshold(val)}
        report["heads"][directory.name] = {
            "marks": {name: _at(val, held, t) for name, t in marks.items()},
            "curves": [_at(val, held, float(t)) for t in THRESHOLDS],
        }
    return report


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["heads"])
    cols = min(3, len(names))  # wrap: a row of five panels is too wide to read
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.4 * rows), sharey=True, squeeze=False)
    for ax in axes.flat[len(names) :]:
        ax.set_visible(False)
    t = np.array(report["thresholds"])
    for ax, name in zip(axes.flat, names, strict=False):
        head = report["heads"][name]
        curves = head["curves"]
        series = {
            "validation recall": [c["recall"] for c in curves],
            "validation FPR, ordinary": [c["fpr_by_kind"].get("ordinary") for c in curves],
            "validation FPR, alarming": [c["fpr_by_kind"].get("alarming") for c in curves],
        }
        for group in curves[0]["held_out"]:
            series[f"held-out {group}"] = [c["held_out"][group] for c in curves]
        for label, values in series.items():
            style = "-" if label.startswith("validation") else "--"
            ax.plot(t, values, style, label=label, lw=1.4)
        for mark, row in head["marks"].items():
            ax.axvline(row["threshold"], color="k" if mark == "shipped" else "tab:gray", ls=":", lw=1)
            ax.text(row["threshold"], 1.02, mark.replace("_", " "), rotation=90, fontsize=7, va="bottom")
        ax.set_title(name, fontsize=10, pad=40)
        ax.set_xlabel("threshold")
        ax.set_ylim(0, 1.0)
    for row in axes:
        row[0].set_ylabel("rate")
    axes[0][cols - 1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--head", type=Path, action="append", required=True, help="head folder (repeatable)")
    parser.add_argument("--output", type=Path, default=Path("runs/tradeoff"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--topical-negatives",
        type=int,
        default=1200,
        help="benign requests on harm's topics in the validation split (added last: other rows unchanged)",
    )
    args = parser.parse_args(argv)
    report = run(args.head, args.seed, args.topical_negatives)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "tradeoff.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(report, args.output / "tradeoff.png")
    print(json.dumps({name: head["marks"] for name, head in report["heads"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
