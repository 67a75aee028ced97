"""Verdict latency per 8-token chunk through the sidecar, p50 and p99, for 1, 4 and 16 streams.

    python benchmarks/server_latency.py [--quick] [--json]

Each stream is a moderation session fed a response in chunks of 8 tokens over HTTP; the
latency is the client-side time of one chunk request (HTTP + queue + batched pass).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from guardrail.client import AsyncGuardrailClient
from guardrail.guard import load_safety_model
from guardrail.server import Settings, create_app
from guardrail.server.background import BackgroundServer
from guardrail.types import GuardConfig

TEXT = (
    "Bread is one of the oldest prepared foods. You mix flour, water, salt and yeast, knead the "
    "dough until it is smooth and elastic, let it rise in a warm place for an hour, shape it, let "
    "it rise again and bake it in a hot oven until the crust is golden brown and it sounds hollow. "
) * 3


def chunks_of(tokenizer: Any, text: str, size: int = 8) -> list[str]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ends = [end for _, end in enc["offset_mapping"]]
    cuts = [0] + [ends[i] for i in range(size - 1, len(ends), size)]
    return [text[a:b] for a, b in zip(cuts, [*cuts[1:], len(text)], strict=True) if text[a:b]]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def run_streams(url: str, streams: int, chunks: list[str]) -> list[float]:
    config = GuardConfig(threshold=1.0)  # never intercept: every stream runs to the end
    latencies: list[float] = []
    async with AsyncGuardrailClient(url, config=config, timeout=120) as client:

        async def one(i: int) -> None:
            session = await client.session(f"Tell me about bread, request {i}")
            for chunk in chunks:
                started = time.perf_counter()
                await session.feed(chunk)
                latencies.append((time.perf_counter() - started) * 1000)
            await session.delete()

        await asyncio.gather(*(one(i) for i in range(streams)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer chunks per stream")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-batch", type=int, default=16)
    args = parser.parse_args()
    model = load_safety_model()
    chunks = chunks_of(model.tokenizer, TEXT)[: 6 if args.quick else 24]
    results: dict[str, Any] = {"chunk_tokens": 8, "chunks_per_stream": len(chunks), "streams": {}}
    with BackgroundServer(create_app(
            Settings(allow_request_relaxation=True, max_batch=args.max_batch), model)) as srv:
        asyncio.run(run_streams(srv.url, 1, chunks[:2]))  # warm up
        for n in args.streams:
            lat = asyncio.run(run_streams(srv.url, n, chunks))
            row = {"p50_ms": statistics.median(lat), "p99_ms": pct(lat, 0.99), "chunks": len(lat)}
            results["streams"][str(n)] = row
            print(
                f"{n:>3} streams: p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                f"({len(lat)} chunks)"
            )
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
