"""Evaluation harness: attack suites, ASR, over-refusal, interception timing, and a report.

`run_eval` is the Python API behind `guardrail eval`: it selects suites, runs every item
guarded and unguarded with the same seed, appends results to a resumable JSONL file and
writes report.json, report.md and PNG plots into the output folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from guardrail.eval.judge import Judgement, RefusalJudge
from guardrail.eval.suites import (
    QUICK_SUITES,
    SUITES,
    EmptySuiteError,
    EvalItem,
    UnknownSuiteError,
    build_items,
    describe_custom,
    load_dataset_file,
    training_overlap,
)

#: `--quick`: a fixed-seed subset small enough for CI on a CPU.
QUICK_LIMIT = 6
QUICK_MAX_NEW_TOKENS = 48

__all__ = [
    "QUICK_SUITES",
    "SUITES",
    "EmptySuiteError",
    "EvalItem",
    "EvalResult",
    "Judgement",
    "RefusalJudge",
    "UnknownSuiteError",
    "build_items",
    "run_eval",
    "select_items",
]


@dataclass
class EvalResult:
    """The report (as written to report.json), the item records and the files written."""

    report: dict[str, Any]
    records: list[dict[str, Any]]
    paths: dict[str, Path]


def select_items(
    suites: list[str] | None = None,
    *,
    quick: bool = False,
    limit: int | None = None,
    seed: int = 0,
    datasets: list[str | Path] | None = None,
) -> list[EvalItem]:
    """The items a run covers: named suites (all, or the quick set) plus custom JSONL datasets."""
    if suites is None:
        suites = [] if datasets else list(QUICK_SUITES if quick else SUITES)
    if quick and limit is None:
        limit = QUICK_LIMIT
    items = build_items(suites, limit=limit, seed=seed) if suites else []
    for path in datasets or []:
        items.extend(load_dataset_file(path, limit=limit, seed=seed))
    if not items:
        raise EmptySuiteError("nothing to evaluate: no suite and no dataset given")
    return items


def run_eval(
    guard: Any = None,
    suites: list[str] | None = None,
    *,
    output: str | Path = "runs/eval",
    quick: bool = False,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int | None = None,
    datasets: list[str | Path] | None = None,
    progress: bool = True,
    fresh: bool = False,
    plots: bool = True,
    report_only: bool = False,
    items: list[EvalItem] | None = None,
) -> EvalResult:
    """Evaluate `guard` (default: `Guard()`) and write the report; rerun with the same output to resume.

    `items` overrides the selection (suites, quick, limit, seed, datasets).
    """
    from guardrail.eval.report import build_report, write_report
    from guardrail.eval.runner import load_records, run_items

    if items is None:
        items = select_items(suites, quick=quick, limit=limit, seed=seed, datasets=datasets)
    if max_new_tokens is None:
        max_new_tokens = QUICK_MAX_NEW_TOKENS
    judge = RefusalJudge()
    started = time.perf_counter()
    effective_limit = limit if limit is not None else (QUICK_LIMIT if quick else None)
    meta: dict[str, Any] = {"seed": seed, "quick": quick, "limit": effective_limit}
    if report_only:
        done = {r["id"]: r for r in load_records(output)}
        records = [done[i.id] for i in items if i.id in done]
        run_meta: dict[str, Any] = {}
        run_file = Path(output) / "run.json"
        if run_file.is_file():
            import json

            run_meta = json.loads(run_file.read_text(encoding="utf-8"))
    else:
        if guard is None:
            from guardrail.guard import Guard

            guard = Guard()
        from guardrail.eval.runner import guard_fingerprint

        records = run_items(
            guard,
            items,
            output,
            max_new_tokens=max_new_tokens,
            judge=judge,
            progress=progress,
            fresh=fresh,
            meta={"seed": seed},
        )
        run_meta = {**guard_fingerprint(guard), "max_new_tokens": max_new_tokens}
        model = getattr(guard, "model", None)
        if model is not None:
            run_meta["device"] = str(getattr(model, "device", "cpu"))
    import platform

    meta.update({"host": platform.node(), "wall_seconds": round(time.perf_counter() - started, 1)})
    meta = {**run_meta, **meta}
    suite_info = {
        name: SUITES[name].describe() for name in dict.fromkeys(i.suite for i in items) if name in SUITES
    }
    suite_info.update(describe_custom(items))
    report = build_report(
        records,
        suites=suite_info,
        judge=judge.describe(),
        meta=meta,
        overlap=training_overlap(items),
        expected_items=len(items),
    )
    paths = write_report(report, records, output, plots=plots)
    return EvalResult(report=report, records=records, paths=paths)
