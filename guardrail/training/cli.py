"""`guardrail train` sub-command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_train_command(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("train", help="train a [CLS] safety head (data, trajectories, report)")
    parser.add_argument("--output", default="runs/head", help="folder for the head and its report")
    parser.add_argument(
        "--model", default=None, help="local Hugging Face model folder (default: SmolLM2-135M)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--no-folds", action="store_true", help="skip leave-one-source-out folds")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the pipeline end to end")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from guardrail.training.pipeline import run

    report = run(
        Path(args.output),
        model=args.model,
        seed=args.seed,
        epochs=args.epochs,
        folds=not args.no_folds,
        quick=args.quick,
    )
    print(
        json.dumps(
            {
                "threshold": report["threshold"],
                "held_out_auroc": report["held_out_auroc"],
                "held_out_groups": report["held_out_groups"],
            },
            indent=2,
        )
    )
    return 0
