"""Throughput of 16 concurrent moderation sessions with batching vs the same 16 one at a time.

    python benchmarks/batching_throughput.py [--quick] [--json]

Both runs go through the sidecar over HTTP with the same 8-token chunks. "Sequential"
serves the sessions one after another on a sidecar that never waits to fill a batch
(`max_batch=1`, `max_wait_ms=0`, so no step pays the batching window); "batched" runs them
concurrently on a sidecar with the default window, so the batcher puts their chunks into
shared forward passes. Both sidecars serve the same model object and are warmed the same way
(a round of each shape before any figure); measured rounds alternate A-B-B-A so neither side
always runs on a warmer or quieter machine. Figures: the median speedup and every round's.
Target on a 2-core CPU: >= 2.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from server_latency import TEXT, chunks_of  # same text and chunking as the latency run

from guardrail.client import AsyncGuardrailClient
from guardrail.guard import load_safety_model
from guardrail.server import Settings, create_app
from guardrail.server.background import BackgroundServer
from guardrail.types import GuardConfig


async def serve(url: str, sessions: int, chunks: list[str], concurrent: bool) -> float:
    """Chunks per second for `sessions` sessions fed `chunks` each."""
    async with AsyncGuardrailClient(url, config=GuardConfig(threshold=1.0), timeout=300) as client:

        async def one(i: int) -> None:
            session = await client.session(f"Tell me about bread, request {i}")
            for chunk in chunks:
                await session.feed(chunk)
            await session.delete()

        started = time.perf_counter()
        if concurrent:
            await asyncio.gather(*(one(i) for i in range(sessions)))
        else:
            for i in range(sessions):
                await one(i)
        return sessions * len(chunks) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer chunks per session")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=None, help="A-B-B-A blocks (default 2, 1 with --quick)")
    args = parser.parse_args()
    model = load_safety_model()
    chunks = chunks_of(model.tokenizer, TEXT)[: 6 if args.quick else 16]
    blocks = args.rounds or (1 if args.quick else 2)
    results: dict[str, Any] = {
        "sessions": args.sessions,
        "chunks_per_session": len(chunks),
        "chunk_tokens": 8,
    }
    one_at_a_time = Settings(allow_request_relaxation=True, max_batch=1, max_wait_ms=0)
    batching = Settings(allow_request_relaxation=True, max_batch=args.sessions)
    with BackgroundServer(create_app(one_at_a_time, model)) as seq_srv, \
            BackgroundServer(create_app(batching, model)) as batch_srv:
        # The same warm-up for both sides: two sessions of two chunks, in each side's shape.
        asyncio.run(serve(seq_srv.url, 2, chunks[:2], False))
        asyncio.run(serve(batch_srv.url, 2, chunks[:2], True))
        seq_runs: list[float] = []
        batch_runs: list[float] = []
        for _ in range(blocks):  # A B B A
            seq_runs.append(asyncio.run(serve(seq_srv.url, args.sessions, chunks, False)))
            batch_runs.append(asyncio.run(serve(batch_srv.url, args.sessions, chunks, True)))
            batch_runs.append(asyncio.run(serve(batch_srv.url, args.sessions, chunks, True)))
            seq_runs.append(asyncio.run(serve(seq_srv.url, args.sessions, chunks, False)))
    sequential, batched = statistics.median(seq_runs), statistics.median(batch_runs)
    results.update(
        sequential_chunks_per_s=round(sequential, 2), batched_chunks_per_s=round(batched, 2),
        speedup=round(batched / sequential, 3),
        sequential_runs=[round(v, 2) for v in seq_runs], batched_runs=[round(v, 2) for v in batch_runs],
        speedup_range=[round(min(batch_runs) / max(seq_runs), 3), round(max(batch_runs) / min(seq_runs), 3)],
        sequential_settings={"max_batch": 1, "max_wait_ms": 0.0},
        batched_settings={"max_batch": batching.max_batch, "max_wait_ms": batching.max_wait_ms},
    )
    print(f"sequential: {sequential:7.2f} chunks/s  (runs {results['sequential_runs']})")
    print(f"batched:    {batched:7.2f} chunks/s  (runs {results['batched_runs']})")
    print(f"speedup:    {batched / sequential:7.2f}x (target >= 2.5x; range {results['speedup_range']})")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
