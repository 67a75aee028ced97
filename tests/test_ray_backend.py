"""The sidecar on Ray Serve: two model replicas on the test session's local Ray instance.

The HTTP behaviour is covered by `test_server_api`, which runs on this backend too; here:
affinity (32 sessions over 2 replicas), load balancing of stateless requests, replica loss
with replay in the client, the route prefix, and the Serve config file.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tests import test_server_api as api
from tests.backends import RayBackend
from tests.test_server_support import SAFE_PART, SCRIPT, lax_settings

ROOT = Path(__file__).resolve().parents[1]
REPLICA = "x-guardrail-replica"


def test_server_app_does_not_import_ray() -> None:
    code = ("import sys, guardrail.server.app, guardrail.server.cli, guardrail.client; "
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def ray_server(ray_cluster: SimpleNamespace) -> Iterator[SimpleNamespace]:

    with RayBackend(ray_cluster).serve(lax_settings(max_body_bytes=4096)) as running:
        yield running


def test_32_sessions_stick_to_their_replica(ray_server: SimpleNamespace) -> None:
    served: dict[str, set[str]] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        with httpx.Client(base_url=ray_server.url, timeout=120) as c:
            created = c.post("/v1/sessions", json={"prompt": f"user {i}"})
            sid = created.json()["id"]
            seen = {created.headers[REPLICA]}
            for word in ("one ", "two ", "three "):
                r = c.post(f"/v1/sessions/{sid}/chunks", json={"text": word})
                if r.status_code != 200:
                    errors.append(r.text)
                seen.add(r.headers[REPLICA])
            seen.add(c.post(f"/v1/sessions/{sid}/close").headers[REPLICA])
            with lock:
                served[sid] = seen

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(served) == 32
    for sid, seen in served.items():
        assert len(seen) == 1, f"{sid} served by {seen}"
        assert sid.startswith(f"sess_{next(iter(seen))}.")  # the id names its replica
    replicas = {next(iter(seen)) for seen in served.values()}
    assert len(replicas) == 2, "both replicas should hold sessions"


def test_stateless_requests_are_balanced(ray_server: SimpleNamespace) -> None:
    """Concurrent checks spread over both replicas (the less loaded of two is picked)."""
    seen: list[str] = []

    def hit(i: int) -> None:
        with httpx.Client(base_url=ray_server.url, timeout=60) as c:
            r = c.post("/v1/check", json={"prompt": f"hi {i}"})
            assert r.status_code == 200
            seen.append(r.headers[REPLICA])

    threads = [threading.Thread(target=hit, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 16 and len(set(seen)) == 2


def test_replica_loss_recovers_by_replay(ray_server: SimpleNamespace) -> None:
    """Kill one replica mid-stream: its sessions replay elsewhere, the others never notice,
    and no unsafe text is released on the way."""
    from guardrail.client import GuardrailClient
    from guardrail.types import GuardConfig

    ray = ray_server.ray
    words = SCRIPT.split(" ")
    pieces = [words[0]] + [" " + w for w in words[1:]]
    cut = len(SAFE_PART.split(" ")) // 2  # kill halfway through the safe part
    with GuardrailClient(ray_server.url, timeout=120, retries=5) as client:
        # Earlier tests may have left sessions on one replica, so placement is uneven: open
        # sessions until both replicas hold some (new sessions go to the emptier replica).
        sessions = []
        for i in range(40):
            sessions.append(client.session(f"story {i}", config=GuardConfig(**api.STRICT)))
            owners = [s.id.split(".")[0].removeprefix("sess_") for s in sessions]  # type: ignore[union-attr]
            if len(sessions) >= 4 and len(set(owners)) == 2:
                break
        assert len(set(owners)) == 2, "sessions should be spread over both replicas"
        shown = ["" for _ in sessions]
        for k, s in enumerate(sessions):
            for piece in pieces[:cut]:
                shown[k] += s.feed(piece).released
        victim = owners[0]
        _kill_replica(ray, ray_server.app_name, victim)
        results = []
        for k, s in enumerate(sessions):
            before = s.id
            intercepted = False
            for piece in pieces[cut:]:
                verdict = s.feed(piece)
                shown[k] += verdict.released
                if verdict.intercepted:
                    intercepted = True
                    break
            results.append((owners[k], before, s, intercepted))
        for k, (owner, before, s, intercepted) in enumerate(results):
            assert s.degraded is None, s.degraded
            assert intercepted, "the unsafe part must be caught, replayed or not"
            assert "bomb" not in shown[k]
            assert SCRIPT.startswith(shown[k]), shown[k]  # nothing shown twice, lost or out of order
            assert len(shown[k]) >= len(SAFE_PART) // 2
            if owner == victim:
                assert s.replays == 1 and s.id != before and not s.id.startswith(f"sess_{victim}.")
            else:
                assert s.replays == 0 and s.id == before
        assert client.fallbacks == 0


def _kill_replica(ray: Any, app_name: str, unique_id: str) -> None:
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].endswith(f"{app_name}#GuardrailReplica#{unique_id}")]
    assert names, f"replica {unique_id} not found"
    ray.kill(ray.get_actor(names[0], namespace="serve"), no_restart=True)
    time.sleep(0.2)



def test_mounted_under_a_route_prefix_with_its_chat_page(ray_server: SimpleNamespace) -> None:
    """Each test application is served below its own prefix; the page's links stay inside it."""
    prefix = "/" + ray_server.url.rsplit("/", 1)[-1]
    with httpx.Client(base_url=ray_server.url, timeout=60) as c:
        page = c.get("/")
        assert page.status_code == 200 and 'src="static/app.js"' in page.text
        bare = httpx.get(ray_server.url, timeout=30)  # no trailing slash: relative links need one
        assert bare.status_code == 307 and bare.headers["location"] == prefix + "/"
        script = c.get("/static/app.js")
        assert script.status_code == 200 and 'fetch("v1/generate"' in script.text
        outside = httpx.get(ray_server.url.removesuffix(prefix) + "/v1/check", timeout=30)
        assert outside.status_code == 404  # nothing is served outside the prefix


def test_serve_config_file_validates_and_deploys(ray_cluster: SimpleNamespace) -> None:
    """deploy/serve-config.yaml passes Serve's own schema, and its application, built from
    its import path and args as `serve deploy` does, serves (CPU and a test model here)."""
    import importlib

    import yaml
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load((ROOT / "deploy" / "serve-config.yaml").read_text())
    config = ServeDeploySchema.parse_obj(raw)
    (app,) = config.applications
    assert {d.name for d in app.deployments} <= {"GuardrailIngress", "GuardrailReplica"}
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    args = {**app.args, "device": "cpu", "dtype": None, "replica_gpus": 0, "replica_cpus": 0.25,
            "ingress_cpus": 0.1, "ingress_replicas": 1, "model_factory": "tests.backends:keyword_model"}
    try:
        serve.run(builder(args), name="guardrail-config", route_prefix="/guardrail-config")
        url = f"{ray_cluster.url}/guardrail-config"
        seen: set[str] = set()
        deadline = time.monotonic() + 60  # the ingress learns of late replicas asynchronously
        with httpx.Client(base_url=url, timeout=60) as c:
            while len(seen) < app.args["replicas"] and time.monotonic() < deadline:
                r = c.post("/v1/check", json={"prompt": "hello"})
                assert r.status_code == 200
                seen.add(r.headers[REPLICA])
        assert len(seen) == app.args["replicas"], f"served by {seen}"
    finally:
        serve.delete("guardrail-config")


def test_autoscaling_up_under_load_and_down_with_session_replay(ray_cluster: SimpleNamespace) -> None:
    """One replica grows to two under load and shrinks back when it ends; a session whose
    replica is scaled away is replayed by the client, with no error shown to the app."""
    from ray import serve

    from guardrail.client import GuardrailClient
    from guardrail.types import GuardConfig

    fast = {"upscale_delay_s": 0.5, "downscale_delay_s": 2.0, "metrics_interval_s": 0.5,
            "look_back_period_s": 1.0}
    backend = RayBackend(ray_cluster)
    with backend.serve(lax_settings(), delay_s=0.4, replicas=1, min_replicas=1, max_replicas=2,
                       target_ongoing_requests=1, autoscaling=fast) as running, \
            GuardrailClient(running.url, timeout=120, retries=5) as client:
        session = client.session("a story", config=GuardConfig(**api.STRICT))
        shown = session.feed("Once upon a time").released
        replicas: set[str] = set()
        stop = time.time() + 60

        def load() -> None:
            with httpx.Client(base_url=running.url, timeout=60) as c:
                while len(replicas) < 2 and time.time() < stop:
                    r = c.post("/v1/check", json={"prompt": "busy"})
                    replicas.add(r.headers[REPLICA])

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(replicas) == 2, "a second replica should start under load"
        deadline = time.time() + 90
        while _running_replicas(serve, running.app_name) > 1:
            assert time.time() < deadline, "the idle application should scale back to one replica"
            time.sleep(1)
        for piece in (" there was", " a dog", " in the park."):
            verdict = session.feed(piece)
            shown += verdict.released
        shown += session.close().released
        assert session.degraded is None and client.fallbacks == 0
        assert shown == "Once upon a time there was a dog in the park."
        assert session.replays in (0, 1)  # 1 when its replica was the one scaled away


def _running_replicas(serve: Any, app_name: str) -> int:
    status = serve.status().applications[app_name].deployments["GuardrailReplica"]
    return int(status.replica_states.get("RUNNING", 0))
