"""Metrics, threshold calibration, baselines and plots for the training report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel
    from guardrail.training.trainer import Scored

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
    pairs = [
        (s, label)
        for srow, lrow in zip(scores, labels, strict=True)
        for s, label in zip(srow[1:], lrow[1:], strict=True)
    ]
    flat_s = np.array([s for s, label in pairs if label >= 0])
    flat_l = np.array([label for _, label in pairs if label >= 0])
    if not len(flat_s):
        return {}
    return prompt_metrics(flat_s, flat_l, threshold)


def _streak(flags: list[bool], tau: int) -> bool:
    run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        if run >= tau:
            return True
    return False


def answer_metrics(scored: Scored, threshold: float, tau: int = 3) -> dict[str, Any]:
    """Response-level figures of written answers, with the engine's rule of `tau` consecutive checks.

    - `flagged_at_end`: the last check is unsafe (harm read earlier is not forgotten);
    - `cut_while_benign`: `tau` consecutive unsafe checks while only benign text was read;
    - `caught`: `tau` consecutive unsafe checks once unsafe text was read.
    """
    n = len(scored.check_scores)
    cut = caught = harmful = end_flagged = 0
    end_scores = []
    for srow, lrow in zip(scored.check_scores, scored.check_labels, strict=True):
        checks = list(zip(srow[1:], lrow[1:], strict=True))
        if not checks:
            continue
        end_scores.append(checks[-1][0])
        end_flagged += checks[-1][0] >= threshold
        cut += _streak([s >= threshold for s, label in checks if label == 0], tau)
        unsafe = [s >= threshold for s, label in checks if label == 1]
        if unsafe:
            harmful += 1
            caught += _streak(unsafe, tau)
    out: dict[str, Any] = {
        "n": n,
        "flagged_at_end": end_flagged / max(n, 1),
        "end_score_mean": float(np.mean(end_scores)) if end_scores else None,
        "cut_while_benign": cut / max(n, 1),
        "checks_per_answer": float(np.mean([len(row) - 1 for row in scored.check_scores])) if n else 0.0,
    }
    if harmful:
        out["caught"] = caught / harmful
    return out


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
    if "response_held_out" in report:
        lines += [
            "",
            "## Held-out written answers (unseen wordings and topics; tau = 3, a check every 4 tokens)",
            "",
            "| kind | n | flagged at end | mean end score | cut while benign | caught |",
            "|---|---|---|---|---|---|",
        ]
        for kind, row in report["response_held_out"].items():
            lines.append(
                f"| {kind} | {row['n']} | {_fmt(row['flagged_at_end'])} | {_fmt(row['end_score_mean'])} | "
                f"{_fmt(row['cut_while_benign'])} | {_fmt(row.get('caught'))} |"
            )
    if "compared_head" in report:
        old = report["compared_head"]
        lines += [
            "",
            f"## The head it would replace ({old['directory']}, threshold {old['threshold']:.3f})",
            "",
            f"- held-out AUROC: {_fmt(old['held_out_auroc'])} (this run: {_fmt(report['held_out_auroc'])})",
            "",
            "| group | existing recall | existing FPR | this run recall | this run FPR |",
            "|---|---|---|---|---|",
        ]
        for group, row in old["held_out_groups"].items():
            new = report["held_out_groups"].get(group, {})
            lines.append(
                f"| {group} | {_fmt(row.get('recall'))} | {_fmt(row.get('fpr'))} | "
                f"{_fmt(new.get('recall'))} | {_fmt(new.get('fpr'))} |"
            )
        lines += ["", "| answers | existing end flagged / cut / caught | this run |", "|---|---|---|"]
        for kind, row in old["response_held_out"].items():
            new = report.get("response_held_out", {}).get(kind, {})
            lines.append(
                f"| {kind} | {_fmt(row['flagged_at_end'])} / {_fmt(row['cut_while_benign'])} / "
                f"{_fmt(row.get('caught'))} | {_fmt(new.get('flagged_at_end'))} / "
                f"{_fmt(new.get('cut_while_benign'))} / {_fmt(new.get('caught'))} |"
            )
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
