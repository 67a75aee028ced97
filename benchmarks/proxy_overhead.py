"""Proxy mode overhead: time to first token and total time, via the sidecar vs the upstream directly.

    python benchmarks/proxy_overhead.py [--quick] [--json] [--token-ms 20]

The upstream is a scripted OpenAI-compatible server on loopback that streams one word every
`--token-ms` milliseconds (a stand-in for a real LLM); the sidecar moderates its stream
with the real model and releases text once a check has covered it.

`--json` also reports `check_ms` (the prompt check alone, `/v1/check` on the same prompt),
`hold_back` (tokens the session withholds) and `token_ms`; the target is
`added_ttft_ms <= check_ms + hold_back * token_ms + 50` (`meets_target`). The three
measurements are interleaved run by run, so a shared machine's changing load hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from guardrail.guard import load_safety_model
from guardrail.server import Settings, create_app
from guardrail.server.background import BackgroundServer
from guardrail.types import GuardConfig

ANSWER = (
    "Bread is made by mixing flour, water, salt and yeast into a dough, kneading it, letting it "
    "rise, shaping it and baking it until the crust is golden. "
) * 2


def upstream_app(token_ms: float) -> Starlette:
    words = ANSWER.split(" ")

    async def completions(request: Request) -> Response:
        await request.body()

        async def stream() -> AsyncIterator[str]:
            for i, word in enumerate(words):
                await asyncio.sleep(token_ms / 1000)
                delta = {"content": (" " if i else "") + word}
                choice = {"index": 0, "delta": delta, "finish_reason": None}
                yield "data: " + json.dumps({"choices": [choice]})
                yield "\n\n"
            yield 'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n'
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])


MESSAGES = [{"role": "user", "content": "How is bread made?"}]
GUARD = {"threshold": 1.0}
SLACK_MS = 50.0


def timed_check(base_url: str) -> float:
    """The prompt check alone, as the sidecar runs it (ms)."""
    started = time.perf_counter()
    response = httpx.post(base_url + "/check", json={"messages": MESSAGES, "config": GUARD}, timeout=300)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000


def timed_stream(base_url: str) -> tuple[float, float, str]:
    body: dict[str, Any] = {"model": "m", "stream": True, "guardrail": GUARD, "messages": MESSAGES}
    started = time.perf_counter()
    first: float | None = None
    text = ""
    with httpx.Client(timeout=300) as c, c.stream("POST", base_url + "/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data:") or "[DONE]" in line:
                continue
            chunk = json.loads(line[5:])
            content = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
            if content:
                first = first if first is not None else time.perf_counter() - started
                text += content
    return (first or 0.0) * 1000, (time.perf_counter() - started) * 1000, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--token-ms", type=float, default=20.0, help="upstream delay per word")
    args = parser.parse_args()
    runs = 2 if args.quick else 5
    model = load_safety_model()
    with BackgroundServer(upstream_app(args.token_ms)) as up:
        settings = Settings(allow_request_relaxation=True, upstream=up.url + "/v1")
        with BackgroundServer(create_app(settings, model)) as sidecar:
            timed_stream(sidecar.url + "/v1")  # warm up
            timed_check(sidecar.url + "/v1")
            direct: list[tuple[float, float, str]] = []
            proxied: list[tuple[float, float, str]] = []
            checks: list[float] = []
            for _ in range(runs):  # interleaved, so a change in the machine's load hits all three
                direct.append(timed_stream(up.url + "/v1"))
                proxied.append(timed_stream(sidecar.url + "/v1"))
                checks.append(timed_check(sidecar.url + "/v1"))
    hold_back = GuardConfig.model_validate(GUARD).hold_back  # the server default, GUARD leaves it
    assert all(p[2] == ANSWER for p in proxied), "the proxy changed or withheld safe text"
    result = {
        "token_ms": args.token_ms,
        "words": len(ANSWER.split(" ")),
        "runs": runs,
        "direct_ttft_ms": statistics.median(d[0] for d in direct),
        "direct_total_ms": statistics.median(d[1] for d in direct),
        "proxy_ttft_ms": statistics.median(p[0] for p in proxied),
        "proxy_total_ms": statistics.median(p[1] for p in proxied),
        "check_ms": statistics.median(checks),
        "hold_back": hold_back,
    }
    result["added_ttft_ms"] = result["proxy_ttft_ms"] - result["direct_ttft_ms"]
    result["target_ms"] = result["check_ms"] + hold_back * args.token_ms + SLACK_MS
    result["meets_target"] = result["added_ttft_ms"] <= result["target_ms"]
    print(
        f"direct:  first token {result['direct_ttft_ms']:7.1f} ms, total {result['direct_total_ms']:7.1f} ms"
    )
    print(f"proxied: first token {result['proxy_ttft_ms']:7.1f} ms, total {result['proxy_total_ms']:7.1f} ms")
    print(f"added first-token time {result['added_ttft_ms']:.1f} ms; target <= {result['target_ms']:.1f} ms "
          f"(check {result['check_ms']:.1f} ms + hold-back {hold_back} x {args.token_ms:g} ms"
          f" + {SLACK_MS:g} ms)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
