"""Guarded generation against stock transformers `generate`: wall-time ratio per configuration.

    python benchmarks/generation_overhead.py [--quick] [--json] [--repeats 3] [--seed 0]

The baseline is stock `model.generate` (greedy, the same prompt tokens, the same
`max_new_tokens`), not our own unguarded path, which is measured as one more configuration.
The guard is set never to act (threshold 1.0), so every run produces the same tokens and the
ratio measures the cost of the checks. Configurations are interleaved: each round runs one
prompt under every configuration, in an order shuffled per round (seeded), so no
configuration always runs first, last or after a warm cache. The ratio of a configuration is
taken within its round (same prompt, minutes apart at most) against that round's stock run;
the figures are the median over rounds and the spread (min, quartiles, max).
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine, parser

from guardrail.guard import load_safety_model
from guardrail.model.decoding import SamplingParams, encode_inputs, generate_events
from guardrail.model.engine import SafetyModel
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
STOCK = "stock_generate"
UNGUARDED = "unguarded"


def _ours(model: SafetyModel, prompt: str, config: GuardConfig, guard: bool,
          tokens: int) -> tuple[float, int]:
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0)
    started = time.perf_counter()
    done = None
    for event in generate_events(model, prompt, config, params, guard=guard):
        if isinstance(event, DoneEvent):
            done = event
    assert done is not None
    return time.perf_counter() - started, done.usage.completion_tokens


@torch.inference_mode()
def _stock(model: SafetyModel, prompt: str, tokens: int) -> tuple[float, int]:
    """Stock greedy generation on the same prompt tokens (the guard's prompt encoding)."""
    started = time.perf_counter()
    ids = encode_inputs(model, prompt, None, SamplingParams(max_new_tokens=tokens)).prompt_ids
    input_ids = torch.tensor([ids], device=model.device)
    out = model.lm.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                            max_new_tokens=tokens, pad_token_id=model.tokenizer.eos_token_id,
                            temperature=None, top_p=None, top_k=None)
    n = int(out.shape[1]) - len(ids)
    eos = model.tokenizer.eos_token_id
    if n and int(out[0, -1]) == eos:
        n -= 1  # our count excludes the end-of-sequence token
    return time.perf_counter() - started, n


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"min": round(ordered[0], 4), "q1": round(q[0], 4), "median": round(statistics.median(ordered), 4),
            "q3": round(q[2], 4), "max": round(ordered[-1], 4), "n": len(ordered)}


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--repeats", type=int, default=None, help="rounds per prompt (default 3, 2 with --quick)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-round order")
    args = p.parse_args()
    model = load_safety_model(device=args.device)
    prompts = PROMPTS[:3] if args.quick else PROMPTS
    tokens = 48 if args.quick else 128
    repeats = args.repeats or (2 if args.quick else 3)
    default = GuardConfig()
    configs = {
        "each": GuardConfig(strategy="each", hold_back=1),
        "periodic-4": GuardConfig(strategy="periodic", period=4, hold_back=4),
        "periodic-8": GuardConfig(strategy="periodic", period=8, hold_back=8),
        "default": default,
    }
    quiet = {name: cfg.model_copy(update={"threshold": 1.0}) for name, cfg in configs.items()}
    names = [STOCK, UNGUARDED, *quiet]
    rng = random.Random(args.seed)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    vs_stock: dict[str, list[float]] = {name: [] for name in names if name != STOCK}
    vs_unguarded: dict[str, list[float]] = {name: [] for name in quiet}
    # Warm every path once (allocator, kernels, tokenizer caches), outside the figures.
    _stock(model, prompts[0], 8)
    _ours(model, prompts[0], default, False, 8)
    _ours(model, prompts[0], quiet["each"], True, 8)
    for _ in range(repeats):
        for prompt in prompts:
            order = names[:]
            rng.shuffle(order)
            took: dict[str, float] = {}
            counts: dict[str, int] = {}
            for name in order:
                if name == STOCK:
                    took[name], counts[name] = _stock(model, prompt, tokens)
                elif name == UNGUARDED:
                    took[name], counts[name] = _ours(model, prompt, default, False, tokens)
                else:
                    took[name], counts[name] = _ours(model, prompt, quiet[name], True, tokens)
            assert len(set(counts.values())) == 1, f"runs must produce the same number of tokens: {counts}"
            print(f"round: {prompt[:30]!r} " + ", ".join(f"{n} {took[n]:.2f}s" for n in order),
                  file=sys.stderr, flush=True)
            for name in names:
                seconds[name].append(took[name])
                if name != STOCK:
                    vs_stock[name].append(took[name] / took[STOCK])
                if name in vs_unguarded:
                    vs_unguarded[name].append(took[name] / took[UNGUARDED])
    figures: dict[str, Any] = {
        "ratio_vs_stock": {name: round(statistics.median(v), 4) for name, v in vs_stock.items()},
        "ratio_vs_unguarded": {name: round(statistics.median(v), 4) for name, v in vs_unguarded.items()},
        "spread_vs_stock": {name: spread(v) for name, v in vs_stock.items()},
        "seconds_median": {name: round(statistics.median(v), 3) for name, v in seconds.items()},
        "prompts": len(prompts), "rounds_per_prompt": repeats, "max_new_tokens": tokens,
        "order": f"shuffled per round, seed {args.seed}",
        "default_config": default.model_dump(),
        "machine": machine(),
    }
    emit(figures, args.json)


if __name__ == "__main__":
    main()
