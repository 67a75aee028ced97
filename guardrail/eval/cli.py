"""`guardrail eval` sub-command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_eval_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from guardrail.cli import _add_model_args, _add_policy_args
    from guardrail.eval.suites import SUITES

    parser = subparsers.add_parser(
        "eval",
        help="attack suites, ASR, over-refusal and interception timing, guarded vs unguarded",
        description="Run evaluation suites guarded and unguarded and write report.json, report.md and "
        "PNG plots. Rerunning with the same --output resumes: finished items are skipped.",
    )
    parser.add_argument(
        "--suite",
        action="append",
        default=None,
        metavar="NAME",
        help=f"suite to run (repeatable; default: all). Known: {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--dataset",
        action="append",
        default=None,
        metavar="FILE.jsonl",
        help='extra suite from JSONL lines {"prompt": ..., "harmful": true|false}',
    )
    parser.add_argument(
        "--quick", action="store_true", help="fixed-seed subset of the quick suites (a few minutes on a CPU)"
    )
    parser.add_argument("--limit", type=int, default=None, help="at most about N items per suite")
    parser.add_argument(
        "--seed", type=int, default=0, help="selects the subset and pairs templates with requests"
    )
    parser.add_argument(
        "--max-new-tokens", type=int, default=None, help="tokens per generation (default: 48)"
    )
    parser.add_argument(
        "--output", default=None, help="run folder (default: runs/eval, or runs/eval-quick with --quick)"
    )
    parser.add_argument("--fresh", action="store_true", help="discard earlier results in --output first")
    parser.add_argument("--report-only", action="store_true", help="rebuild the report from saved results")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--list", action="store_true", help="list the suites and exit")
    _add_model_args(parser)
    _add_policy_args(parser)
    parser.set_defaults(func=_run)


class EvalUsageError(Exception):
    """A user error: printed as one line, exit status 2."""


def _run(args: argparse.Namespace) -> int:
    # Handled here rather than by the top-level handler, which may be a second copy of
    # guardrail.cli when it runs as `python -m guardrail.cli`.
    try:
        return _evaluate(args)
    except EvalUsageError as exc:
        print(f"guardrail eval: error: {exc}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from guardrail.cli import _guard
    from guardrail.eval import QUICK_SUITES, run_eval, select_items
    from guardrail.eval.runner import RunMismatchError
    from guardrail.eval.suites import SUITES, EmptySuiteError, UnknownSuiteError

    if args.list:
        for name, suite in SUITES.items():
            mark = "quick" if name in QUICK_SUITES else "     "
            print(f"{name:16} {mark} {'harmful' if suite.harmful else 'benign '}  {suite.description}")
        return 0
    unknown = [s for s in args.suite or [] if s not in SUITES]
    if unknown:
        raise EvalUsageError(f"unknown suite {unknown[0]!r}; known suites: {', '.join(SUITES)}")
    if args.limit is not None and args.limit < 1:
        raise EvalUsageError("--limit must be at least 1")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise EvalUsageError("--max-new-tokens must be at least 1")
    output = Path(args.output or ("runs/eval-quick" if args.quick else "runs/eval"))
    try:
        # Select (and so validate) the items before the model loads.
        items = select_items(
            args.suite, quick=args.quick, limit=args.limit, seed=args.seed, datasets=args.dataset
        )
        guard = None if args.report_only else _guard(args)
        result = run_eval(
            guard,
            args.suite,
            items=items,
            output=output,
            quick=args.quick,
            limit=args.limit,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            datasets=args.dataset,
            progress=not args.no_progress,
            fresh=args.fresh,
            plots=not args.no_plots,
            report_only=args.report_only,
        )
    except (UnknownSuiteError, EmptySuiteError, RunMismatchError, FileNotFoundError) as exc:
        raise EvalUsageError(str(exc)) from exc
    except ValueError as exc:  # a malformed dataset line names its file and line
        if args.dataset and str(exc).startswith(tuple(args.dataset)):
            raise EvalUsageError(str(exc)) from exc
        raise
    report = result.report
    overall = report.get("harmful_overall") or {}
    benign = report.get("benign_overall") or {}
    prompt = report.get("prompt_level") or {}
    summary = {
        "items": report["meta"]["items_done"],
        "asr_unguarded": overall.get("asr_unguarded"),
        "asr_guarded": overall.get("asr_guarded"),
        "over_refusal_guarded": benign.get("over_refusal_guarded"),
        "prompt_auroc": prompt.get("auroc"),
        "report": str(result.paths["markdown"]),
    }
    print(json.dumps(summary, indent=2))
    sys.stdout.flush()
    return 0
