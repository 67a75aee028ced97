"""The serving backends the sidecar's HTTP tests run against, behind one small interface.

`backend.serve(settings)` yields something with a `url`: uvicorn in a thread of this process,
or a Ray Serve application with two model replicas on the local Ray instance of the test
session (each application under its own route prefix, so several can be up at once). Both
serve the keyword model of `test_server_support`, so the same assertions hold on each.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Protocol

import httpx

from guardrail.server import Settings, create_app
from tests.test_server_support import ServerThread, make_model

BACKENDS = ("uvicorn", "ray")
RAY_REPLICAS = 2


class RunningSidecar(Protocol):
    url: str


class SidecarBackend(Protocol):
    name: str

    def serve(self, settings: Settings, *, delay_s: float = 0.0) -> contextlib.AbstractContextManager[Any]:
        """Start a sidecar with these settings; `delay_s` slows every model pass (queue tests)."""
        ...


class UvicornBackend:
    name = "uvicorn"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @contextlib.contextmanager
    def serve(self, settings: Settings, *, delay_s: float = 0.0) -> Iterator[ServerThread]:
        model = make_model(self.tokenizer)
        model.delay_s = delay_s  # type: ignore[attr-defined]
        with ServerThread(create_app(settings, model)) as running:
            yield running


def keyword_model() -> Any:
    """The keyword model, built inside each Ray replica."""
    from transformers import AutoTokenizer

    from guardrail.model.loading import default_model_dir

    return make_model(AutoTokenizer.from_pretrained(str(default_model_dir())))


def slow_keyword_model() -> Any:
    model = keyword_model()
    model.delay_s = 0.4
    return model


def slower_keyword_model() -> Any:
    """Slow enough that a simultaneous burst outruns every replica's queue on a loaded machine."""
    model = keyword_model()
    model.delay_s = 1.5
    return model


RAY_FACTORIES = {0.0: "tests.backends:keyword_model", 0.4: "tests.backends:slow_keyword_model",
                 1.5: "tests.backends:slower_keyword_model"}


class RayBackend:
    name = "ray"
    _names = itertools.count(1)

    def __init__(self, cluster: SimpleNamespace) -> None:
        self.cluster = cluster

    @contextlib.contextmanager
    def serve(self, settings: Settings, *, delay_s: float = 0.0, **scaling: Any) -> Iterator[SimpleNamespace]:
        """Deploy under a fresh route prefix; `scaling` overrides `build_app` keywords."""
        from ray import serve

        from guardrail.server.ray_app import build_app

        if delay_s not in RAY_FACTORIES:
            offered = sorted(RAY_FACTORIES)
            raise ValueError(f"the Ray backend offers delay_s in {offered} (a model built by import path)")
        name = f"guardrail-test-{next(self._names)}"
        factory = RAY_FACTORIES[delay_s]
        options: dict[str, Any] = {"replicas": RAY_REPLICAS, "replica_cpus": 0.25, "ingress_cpus": 0.1,
                                   "model_factory": factory, **scaling}
        app = build_app(settings, **options)
        url = f"{self.cluster.url}/{name}"
        try:
            serve.run(app, name=name, route_prefix=f"/{name}")
            _wait_ready(url, settings.api_key)
            yield SimpleNamespace(url=url, app_name=name, ray=self.cluster.ray)
        finally:
            serve.delete(name)


def _wait_ready(url: str, api_key: str | None, timeout_s: float = 120) -> None:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/readyz", headers=headers, timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass  # the proxy may not route the new prefix yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray application at {url} did not become ready")
        time.sleep(0.3)
