"""`session.feed` latency for 8-token chunks as a stream grows, vs re-encoding every chunk.

Ours appends the chunk to the session's KV cache and evaluates one [CLS] query in the same
pass; the baseline re-encodes prompt + response + [CLS] from scratch at each chunk.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine, parser

from guardrail.guard import load_safety_model
from guardrail.model.masks import ClsQuery
from guardrail.model.prompts import encode_prompt
from guardrail.model.session import ModerationSession
from guardrail.types import GuardConfig

MARKS = (128, 512, 1024)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    model = load_safety_model(device=args.device, max_context=4096)
    tok = model.tokenizer
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "while",
        "the",
        "river",
        "runs",
        "past",
        "old",
        "mills",
        "and",
        "children",
        "play",
        "in",
        "the",
        "fields",
        "near",
        "the",
        "village",
    ]
    vocab_ids = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
    chunk_ids = [vocab_ids[i % len(vocab_ids)] for i in range(1024)]
    chunks = [tok.decode(chunk_ids[i : i + 8]) for i in range(0, 1024, 8)]
    config = GuardConfig(threshold=1.0)
    session = ModerationSession(model, "Tell me a long story.", config)
    prompt_ids = encode_prompt(tok, "Tell me a long story.")
    feed_ms: dict[int, list[float]] = {m: [] for m in MARKS}
    reencode_ms: dict[int, list[float]] = {m: [] for m in MARKS}
    window = 3 if args.quick else 6
    for i, chunk in enumerate(chunks):
        started = time.perf_counter()
        verdict = session.feed(chunk)
        took = (time.perf_counter() - started) * 1000
        for mark in MARKS:
            if mark - 8 * window < verdict.tokens <= mark:
                feed_ms[mark].append(took)
                # baseline: re-encode everything seen so far plus one [CLS]
                seen = session.response[: verdict.tokens]
                ids = prompt_ids + seen
                started = time.perf_counter()
                model.step(
                    model.new_cache(),
                    ids,
                    check=ClsQuery(seen=len(ids), prompt_len=len(prompt_ids)),
                    want_logits=False,
                )
                reencode_ms[mark].append((time.perf_counter() - started) * 1000)
        if args.quick and i > 130:
            break
    result = {
        "feed_ms": {str(m): round(statistics.median(v), 2) for m, v in feed_ms.items() if v},
        "reencode_ms": {str(m): round(statistics.median(v), 2) for m, v in reencode_ms.items() if v},
        "chunk_tokens": 8,
        "machine": machine(),
    }
    emit(result, args.json)


if __name__ == "__main__":
    main()
