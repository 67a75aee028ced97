"""Throughput of 16 concurrent moderation sessions with batching vs the same 16 one at a time.

    python benchmarks/batching_throughput.py [--quick] [--json]

Both runs go through the sidecar over HTTP with the same 8-token chunks. "Sequential"
serves the sessions one after another; "batched" runs them concurrently so the batcher
puts their chunks into shared forward passes. Target on a 2-core CPU: >= 2.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    args = parser.parse_args()
    model = load_safety_model()
    chunks = chunks_of(model.tokenizer, TEXT)[: 6 if args.quick else 16]
    results: dict[str, Any] = {
        "sessions": args.sessions,
        "chunks_per_session": len(chunks),
        "chunk_tokens": 8,
    }
    with BackgroundServer(create_app(Settings(max_batch=args.sessions), model)) as srv:
        asyncio.run(serve(srv.url, 1, chunks[:2], False))  # warm up
        sequential = asyncio.run(serve(srv.url, args.sessions, chunks, False))
        batched = asyncio.run(serve(srv.url, args.sessions, chunks, True))
    results.update(
        sequential_chunks_per_s=sequential, batched_chunks_per_s=batched, speedup=batched / sequential
    )
    print(f"sequential: {sequential:7.2f} chunks/s")
    print(f"batched:    {batched:7.2f} chunks/s")
    print(f"speedup:    {batched / sequential:7.2f}x (target >= 2.5x)")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
