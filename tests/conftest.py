"""Shared fixtures: a tiny random Llama for fast engine tests, the real default model for integration."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from guardrail.model.engine import SafetyModel
from guardrail.model.loading import default_model_dir
from tests.backends import BACKENDS, RayBackend, SidecarBackend, UvicornBackend
from tests.keyword_model import tiny_parts

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tokenizer():  # type: ignore[no-untyped-def]
    return AutoTokenizer.from_pretrained(str(default_model_dir()))


def make_tiny(tokenizer, *, seed: int = 0, max_context: int | None = None) -> SafetyModel:  # type: ignore[no-untyped-def]
    lm, head = tiny_parts(tokenizer, seed=seed, lively_adapters=True)
    return SafetyModel(lm, tokenizer, head, name="tiny", max_context=max_context)


@pytest.fixture()
def tiny(tokenizer) -> SafetyModel:  # type: ignore[no-untyped-def]
    return make_tiny(tokenizer)


@pytest.fixture(scope="session")
def guard() -> Iterator[object]:
    from guardrail.guard import Guard

    yield Guard()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[SimpleNamespace]:
    """A local Ray instance (2 CPUs) with Serve listening on a loopback port, for the session."""
    try:
        import ray
        from ray import serve
    except ImportError:
        pytest.skip("Ray Serve is not installed (pip install 'guardrail[ray]'); Ray backend tests skipped")
    from guardrail.server.background import free_port

    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env},
             configure_logging=False, log_to_driver=False)
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield SimpleNamespace(ray=ray, url=f"http://127.0.0.1:{port}")
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tokenizer: object) -> SidecarBackend:
    """Each serving backend in turn (module scope: one server per backend per module)."""
    if request.param == "ray":
        return RayBackend(request.getfixturevalue("ray_cluster"))
    return UvicornBackend(tokenizer)


@pytest.fixture(scope="session")
def real_sidecar() -> Iterator[object]:
    """`guardrail serve` with its defaults (default model, shipped head) on loopback, once ready."""
    import httpx

    from guardrail.server import Settings, create_app
    from tests.test_server_support import ServerThread

    with ServerThread(create_app(Settings())) as srv:
        deadline = time.time() + 180
        with httpx.Client(base_url=srv.url) as c:
            while c.get("/readyz").status_code != 200:
                assert time.time() < deadline, "model did not load"
                time.sleep(0.2)
        yield srv
