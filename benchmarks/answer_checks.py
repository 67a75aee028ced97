"""`check_response` on written answers with held-out wordings: what is flagged, and at what cost.

    nice -n 10 python benchmarks/answer_checks.py [--quick] [--json] [--seed 0]

The answers are the training recipe's held-out written answers (`guardrail.training.responses`,
split `held_out`: wordings, topics and closing paragraphs never trained on), built around
requests of the allow-listed malicious training sources: harmful answers followed by one or
two benign paragraphs, benign answers that turn harmful, and long benign answers (about 300 to
400 tokens). A response check reads the answer where its moderated stream would (the config's
schedule, tau, the covering check), so harm followed by benign text stays flagged; the figures
are the share flagged per kind (for long benign answers: false positives) and the seconds per
check, under the shipped head and its calibrated threshold.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

from _common import emit, machine, parser

from guardrail.guard import Guard
from guardrail.training import responses
from guardrail.training.augment import core_task
from guardrail.training.recipe import MALICIOUS_SOURCES
from guardrail.training.sources import load_source


def answers(seed: int, scale: float) -> dict[str, list[responses.WrittenResponse]]:
    rng = random.Random(seed)
    pool = [(name, e.text, core) for name in MALICIOUS_SOURCES if name != "rho_refusal_harmful"
            for e in load_source(name) if (core := core_task(e.text)) is not None]
    n = {kind: max(2, round(count * scale)) for kind, count in
         {"harm_then_benign": 40, "benign_then_harmful": 30, "long_benign": 21}.items()}
    return {
        "harm_then_benign": responses.harmful_answers(
            "held_out", rng.sample(pool, n["harm_then_benign"]), rng, then_benign=True),
        "benign_then_harmful": responses.benign_then_harmful(
            "held_out", rng.sample(pool, n["benign_then_harmful"]), rng),
        "long_benign": responses.long_benign("held_out", rng, n["long_benign"]),
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    guard = Guard(device=args.device)
    figures: dict[str, Any] = {"machine": machine(), "threshold": guard.threshold}
    for kind, items in answers(args.seed, 0.25 if args.quick else 1.0).items():
        seconds = []
        flagged = 0
        for item in items:
            started = time.perf_counter()
            flagged += guard.check_response(item.prompt, item.response).unsafe
            seconds.append(time.perf_counter() - started)
        figures[kind] = {"n": len(items), "flagged": round(flagged / len(items), 3),
                         "median_s": round(statistics.median(seconds), 3)}
    emit(figures, args.json)


if __name__ == "__main__":
    main()
