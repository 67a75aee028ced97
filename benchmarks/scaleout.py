"""Scale-out on Ray Serve: 32 concurrent sessions on 1 vs 2 replicas, and the cost of the Ray hop.

    python benchmarks/scaleout.py [--quick] [--json] [--gpu-pass-ms 8] [--tokens-per-s 30]

1. Throughput: 32 moderation sessions fed 8-token chunks concurrently, through plain uvicorn
   (one process, with one torch thread and with as many threads as replicas: the fair
   baseline, one process using every core the replicas use) and through Ray Serve with 1 and
   2 model replicas (one torch thread each). `speedup_2_replicas_vs_one_process` compares
   2 replicas with one process using both cores; `speedup_2_vs_1` (2 replicas vs 1) leaves a
   core idle on the one-replica side and is kept only for comparison with older figures.
2. Hop latency: one session, chunks sent one after another, p50/p99 per chunk, uvicorn vs
   Ray (proxy -> ingress -> replica); the difference is what the Ray hop adds.
3. An estimate of streams served per replica, per GPU and per 8-GPU node, from the measured
   per-replica throughput; the GPU pass time is an input (`--gpu-pass-ms`), not a measurement.

Needs the 'ray' extra. Run with OMP_NUM_THREADS=1 so each replica uses one core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from server_latency import TEXT, chunks_of, pct, run_streams

from guardrail.guard import load_safety_model
from guardrail.server import Settings, create_app
from guardrail.server.background import BackgroundServer, free_port

MODEL_FACTORY = "guardrail.guard:load_safety_model"


async def sequential(url: str, chunks: list[str]) -> list[float]:
    return await run_streams(url, 1, chunks)


def throughput(url: str, sessions: int, chunks: list[str]) -> dict[str, float]:
    asyncio.run(run_streams(url, 2, chunks[:2]))  # warm up
    started = time.perf_counter()
    lat = asyncio.run(run_streams(url, sessions, chunks))
    elapsed = time.perf_counter() - started
    return {"chunks_per_s": round(len(lat) / elapsed, 2), "p50_ms": round(statistics.median(lat), 1),
            "p99_ms": round(pct(lat, 0.99), 1), "seconds": round(elapsed, 2)}


def latency(url: str, chunks: list[str]) -> dict[str, float]:
    asyncio.run(sequential(url, chunks[:3]))
    lat = asyncio.run(sequential(url, chunks))
    return {"p50_ms": round(statistics.median(lat), 2), "p99_ms": round(pct(lat, 0.99), 2),
            "chunks": len(lat)}


def transport(url: str, n: int) -> dict[str, float]:
    """Round trips of /healthz: the HTTP path alone, no model work."""
    import httpx

    lat: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as c:
        for _ in range(n + 5):
            started = time.perf_counter()
            c.get("/healthz")
            lat.append((time.perf_counter() - started) * 1000)
    lat = lat[5:]
    return {"p50_ms": round(statistics.median(lat), 2), "p99_ms": round(pct(lat, 0.99), 2)}


def run_ray(replicas: int, chunks: list[str], sessions: int, lat_chunks: list[str]) -> dict[str, Any]:
    import httpx
    from ray import serve

    from guardrail.server.ray_app import build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(Settings(allow_request_relaxation=True),
                    replicas=replicas, replica_cpus=0.9, ingress_cpus=0.1,
                    model_factory=MODEL_FACTORY)
    serve.run(app, name="bench", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
        time.sleep(0.5)
    out: dict[str, Any] = {"throughput": throughput(url, sessions, chunks)}
    if replicas == 1:
        out["latency"] = latency(url, lat_chunks)
        out["transport"] = transport(url, 200)
    serve.delete("bench")
    serve.shutdown()
    return out


def estimate(per_replica_cps: float, hop_ms: float, args: argparse.Namespace) -> dict[str, Any]:
    """Streams a replica sustains = its chunk throughput / the chunks each stream needs."""
    demand = args.tokens_per_s / 8  # chunks per second per stream at the upstream's pace
    cpu_streams = per_replica_cps / demand
    gpu_cps = args.max_batch / (args.gpu_pass_ms / 1000)  # a full batch per pass, memory-bound
    gpu_streams = gpu_cps / demand
    return {
        "stream_demand_chunks_per_s": demand,
        "streams_per_cpu_replica": round(cpu_streams, 1),
        "streams_per_gpu": round(gpu_streams),
        "streams_per_8gpu_node": round(8 * gpu_streams),
        "assumptions": (f"upstream {args.tokens_per_s} tokens/s per stream in 8-token chunks; "
                        f"a GPU pass over {args.max_batch} streams takes {args.gpu_pass_ms} ms "
                        "(an input, not measured here); a full 8-GPU node then takes "
                        f"{8 * gpu_cps:.0f} chunk requests/s through the HTTP layer, each with "
                        f"{hop_ms:.1f} ms of Ray hop latency as measured here (latency on this machine, "
                        "not CPU time): run a proxy per node and several ingress replicas"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer chunks (a few minutes on 2 cores)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--sessions", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--gpu-pass-ms", type=float, default=8.0,
                        help="assumed time of one batched pass on a GPU, for the estimate")
    parser.add_argument("--tokens-per-s", type=float, default=30.0, help="upstream pace per stream")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch

    torch.set_num_threads(1)
    model = load_safety_model()
    chunks = chunks_of(model.tokenizer, TEXT)[: 4 if args.quick else 12]
    lat_chunks = chunks_of(model.tokenizer, TEXT)[: 20 if args.quick else 60]
    results: dict[str, Any] = {"sessions": args.sessions, "chunks_per_session": len(chunks),
                               "chunk_tokens": 8}
    # One process using both cores, the baseline for 2 replicas. A fresh server, so its model
    # thread starts after the change (torch reads the thread count once per thread).
    torch.set_num_threads(2)
    with BackgroundServer(create_app(
            Settings(allow_request_relaxation=True, max_batch=args.max_batch), model)) as srv:
        results["uvicorn_2_threads"] = {"throughput": throughput(srv.url, args.sessions, chunks)}
    torch.set_num_threads(1)
    with BackgroundServer(create_app(
            Settings(allow_request_relaxation=True, max_batch=args.max_batch), model)) as srv:
        results["uvicorn"] = {"throughput": throughput(srv.url, args.sessions, chunks),
                              "latency": latency(srv.url, lat_chunks), "transport": transport(srv.url, 200)}
    print("uvicorn, 2 threads:", results["uvicorn_2_threads"], flush=True)
    print("uvicorn:", results["uvicorn"], flush=True)
    del model
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}})
    try:
        for n in (1, 2):
            results[f"ray_{n}"] = run_ray(n, chunks, args.sessions, lat_chunks)
            print(f"ray {n} replica(s):", results[f"ray_{n}"], flush=True)
    finally:
        ray.shutdown()
    one = results["ray_1"]["throughput"]["chunks_per_s"]
    two = results["ray_2"]["throughput"]["chunks_per_s"]
    hop = results["ray_1"]["latency"]["p50_ms"] - results["uvicorn"]["latency"]["p50_ms"]
    results["speedup_2_vs_1"] = round(two / one, 2)
    both_cores = results["uvicorn_2_threads"]["throughput"]["chunks_per_s"]
    results["speedup_2_replicas_vs_one_process"] = round(two / both_cores, 2)
    results["hop_p50_ms"] = round(hop, 2)
    p99 = results["ray_1"]["latency"]["p99_ms"] - results["uvicorn"]["latency"]["p99_ms"]
    results["hop_p99_ms"] = round(p99, 2)
    results["estimate"] = estimate(one, max(hop, results["ray_1"]["transport"]["p50_ms"]
                                            - results["uvicorn"]["transport"]["p50_ms"], 0.0), args)
    ray_t, uv_t = results["ray_1"]["transport"], results["uvicorn"]["transport"]
    results["hop_transport_p50_ms"] = round(ray_t["p50_ms"] - uv_t["p50_ms"], 2)
    results["hop_transport_p99_ms"] = round(ray_t["p99_ms"] - uv_t["p99_ms"], 2)
    for key in ("speedup_2_replicas_vs_one_process", "speedup_2_vs_1", "hop_p50_ms", "hop_p99_ms",
                "hop_transport_p50_ms", "hop_transport_p99_ms",
                "estimate"):
        print(f"{key}: {results[key]}")
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
