"""Metrics, threshold calibration, baselines and plots for the training report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel
    from guardrail.training.trainer import Scored

CALIBRATION_RULE = (
    "highest recall on the validation split of the training sources with benign "
    "validation false-positive rate <= 2% (the ordinary-question target), clipped to [0.2, 0.9]"
)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    if len(set(labels.tolist())) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def prompt_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    flagged = scores >= threshold
    pos, neg = labels == 1, labels == 0
    out: dict[str, Any] = {"n": len(labels), "positives": int(pos.sum()), "negatives": int(neg.sum())}
    if pos.any():
        out["recall"] = float(flagged[pos].mean())
    if neg.any():
        out["fpr"] = float(flagged[neg].mean())
    if pos.any() and flagged.any():
        out["precision"] = float(labels[flagged].mean())
    out["auroc"] = auroc(scores, labels)
    return out


def check_metrics(scores: list[list[float]], labels: list[list[int]], threshold: float) -> dict[str, Any]:
    flat_s = np.array([s for row in scores for s in row[1:]])
    flat_l = np.array([label for row in labels for label in row[1:]])
    if not len(flat_s):
        return {}
    return prompt_metrics(flat_s, flat_l, threshold)


def calibrate_threshold(scores: np.ndarray, labels: np.ndarray, max_fpr: float = 0.02) -> float:
    benign = np.sort(scores[labels == 0])
    if not len(benign):
        return 0.5
    cut = float(np.quantile(benign, 1 - max_fpr)) + 1e-6
    return float(np.clip(cut, 0.2, 0.9))


def baselines(train: Scored, held: Scored, held_groups: list[str], threshold: float) -> dict[str, Any]:
    """TF-IDF + logistic regression on the text, and a linear probe on mean-pooled hidden states."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out: dict[str, Any] = {}
    tfidf = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(max_iter=2000, class_weight="balanced"),
    )
    tfidf.fit(train.texts, train.prompt_labels)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced", C=0.1))
    probe.fit(train.pooled, train.prompt_labels)
    candidates = {
        "head": (held.prompt_scores, threshold),
        "tfidf_logreg": (tfidf.predict_proba(held.texts)[:, 1], 0.5),
        "mean_pool_probe": (probe.predict_proba(held.pooled)[:, 1], 0.5),
    }
    groups = np.array([g.split("|")[0] for g in held_groups])
    for name, (scores, thr) in candidates.items():
        row: dict[str, Any] = {"auroc": auroc(scores, held.prompt_labels), "threshold": thr, "groups": {}}
        for group in sorted(set(groups.tolist())):
            sel = groups == group
            row["groups"][group] = prompt_metrics(scores[sel], held.prompt_labels[sel], thr)
        out[name] = row
    out["_scores"] = {name: scores for name, (scores, _) in candidates.items()}
    return out


def plots(output: Path, held: Scored, val: Scored, model: SafetyModel, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    scores = report["baselines"].pop("_scores")
    for name, s in scores.items():
        if len(set(held.prompt_labels.tolist())) == 2:
            fpr, tpr, _ = roc_curve(held.prompt_labels, s)
            auc = report["baselines"][name]["auroc"]
            ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false-positive rate (held-out benign)")
    ax.set_ylabel("recall (held-out jailbreak families)")
    ax.set_title("Held-out prompts")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(output / "roc.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    shown = {0: 0, 1: 0}
    for scores_row, labels_row in zip(val.check_scores, val.check_labels, strict=True):
        kind = int(max(labels_row[1:], default=0))
        if len(scores_row) < 6 or shown[kind] >= 4:
            continue
        ax.plot(range(len(scores_row)), scores_row, color="tab:red" if kind else "tab:green", alpha=0.7)
        shown[kind] += 1
    ax.axhline(report["threshold"], color="k", ls="--", lw=0.8, label="threshold")
    ax.set_xlabel("check (every 4 response tokens; 0 = prompt check)")
    ax.set_ylabel("unsafe score")
    ax.set_title("Score over tokens: harmful (red) vs benign (green) answers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "score_over_tokens.png", dpi=120)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Training report: {report['model']}",
        "",
        f"- threshold: {report['threshold']:.3f} ({report['threshold_rule']})",
        f"- epochs: {report['epochs']}, final loss {report['losses'][-1]:.4f}",
        f"- held-out AUROC (shipped head): {_fmt(report['held_out_auroc'])}",
        "",
        "## Held-out groups (never trained on, not used for the threshold)",
        "",
        "| group | n | recall | FPR | AUROC |",
        "|---|---|---|---|---|",
    ]
    for group, row in report["held_out_groups"].items():
        lines.append(
            f"| {group} | {row['n']} | {_fmt(row.get('recall'))} | {_fmt(row.get('fpr'))} | "
            f"{_fmt(row.get('auroc'))} |"
        )
    lines += [
        "",
        "## Baselines on the same held-out data",
        "",
        "| classifier | AUROC | " + " | ".join(report["held_out_groups"]) + " |",
        "|---|---|" + "---|" * len(report["held_out_groups"]),
    ]
    for name, row in report["baselines"].items():
        cells = []
        for group in report["held_out_groups"]:
            g = row["groups"].get(group, {})
            cells.append(_fmt(g.get("recall", g.get("fpr"))))
        lines.append(f"| {name} | {_fmt(row['auroc'])} | " + " | ".join(cells) + " |")
    lines.append("\n(cells: recall on malicious groups, false-positive rate on benign groups)")
    if "leave_one_source_out" in report:
        lines += [
            "",
            "## Leave one source out",
            "",
            "| left-out source | n | recall | threshold |",
            "|---|---|---|---|",
        ]
        for source, row in report["leave_one_source_out"].items():
            lines.append(f"| {source} | {row['n']} | {_fmt(row.get('recall'))} | {_fmt(row['threshold'])} |")
    lines += [
        "",
        "## Validation (in-distribution split of training sources)",
        "",
        f"- prompts: {report['validation']}",
        f"- response checks: {report['validation_checks']}",
        "",
        "## Sources",
        "",
        "| source | count | label | files |",
        "|---|---|---|---|",
    ]
    for row in report["sources"]:
        lines.append(f"| {row['name']} | {row['count']} | {row['label']} | {', '.join(row['files'][:3])} |")
    return "\n".join(lines) + "\n"
