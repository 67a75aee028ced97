"""Guarded vs unguarded generation: wall-time ratio per check strategy, same model and prompts.

The guard is set never to act (threshold 1.0), so both runs produce the same tokens and the
ratio measures the cost of the checks alone. Runs alternate to spread machine noise.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine, parser

from guardrail.guard import load_safety_model
from guardrail.model.decoding import SamplingParams, generate_events
from guardrail.types import DoneEvent, GuardConfig

PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how photosynthesis works to a ten-year-old.",
    "List some tips for learning a new language.",
    "Describe the water cycle in detail.",
    "What are the pros and cons of remote work?",
    "Write a poem about the sea at night.",
    "How does a bicycle stay upright?",
    "Give me a plan for a weekend trip to the mountains.",
]


def _time(model, prompt: str, config: GuardConfig, guard: bool, tokens: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0)
    started = time.perf_counter()
    done = None
    for event in generate_events(model, prompt, config, params, guard=guard):
        if isinstance(event, DoneEvent):
            done = event
    assert done is not None
    return time.perf_counter() - started, done.usage.completion_tokens


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    model = load_safety_model(device=args.device)
    prompts = PROMPTS[:3] if args.quick else PROMPTS
    tokens = 48 if args.quick else 128
    default = GuardConfig()
    configs = {
        "each": GuardConfig(strategy="each", hold_back=1),
        "periodic-4": GuardConfig(strategy="periodic", period=4, hold_back=4),
        "periodic-8": GuardConfig(strategy="periodic", period=8, hold_back=8),
        "default": default,
    }
    quiet = {name: cfg.model_copy(update={"threshold": 1.0}) for name, cfg in configs.items()}
    _time(model, prompts[0], default, True, 8)  # warm-up
    base_times: list[float] = []
    guarded: dict[str, list[float]] = {name: [] for name in configs}
    for prompt in prompts:
        for name, cfg in quiet.items():
            base, n_base = _time(model, prompt, cfg, False, tokens)
            took, n = _time(model, prompt, cfg, True, tokens)
            assert n == n_base, "guarded and unguarded runs must produce the same tokens"
            base_times.append(base)
            guarded[name].append(took / base)
    ratio = {name: round(statistics.median(v), 4) for name, v in guarded.items()}
    emit(
        {
            "ratio": ratio,
            "unguarded_s_median": round(statistics.median(base_times), 3),
            "prompts": len(prompts),
            "max_new_tokens": tokens,
            "default_config": default.model_dump(),
            "machine": machine(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
