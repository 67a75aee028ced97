"""One keyword model instance in process and behind uvicorn, one Ray app for the module, and
each surface of the guard over them (see `surfaces.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from guardrail import Guard
from guardrail.client import AsyncGuardrailClient, GuardrailClient
from guardrail.server import Settings, create_app
from guardrail.tracing import instrument
from tests.conformance.keyword import CALIBRATED, make_keyword_model
from tests.conformance.surfaces import SURFACES, Surface, async_surface, sync_surface
from tests.test_server_support import ServerThread


@pytest.fixture(scope="module")
def keyword_model(tokenizer: Any) -> Any:
    return make_keyword_model(tokenizer, threshold=CALIBRATED)


@pytest.fixture(scope="module")
def uvicorn_url(keyword_model: Any) -> Iterator[str]:
    with ServerThread(create_app(Settings(), keyword_model)) as server:
        yield server.url


@pytest.fixture(scope="module")
def ray_url(ray_cluster: SimpleNamespace) -> Iterator[str]:
    from tests.backends import RayBackend

    factory = "tests.conformance.keyword:served_model"
    with RayBackend(ray_cluster).serve(Settings(), model_factory=factory) as app:
        yield app.url


@pytest.fixture(scope="module")
def reference(keyword_model: Any) -> Guard:
    """The embedded guard every surface must agree with."""
    return Guard(safety_model=keyword_model)


@pytest.fixture(params=SURFACES)
def surface(request: pytest.FixtureRequest, keyword_model: Any) -> Iterator[Surface]:
    name = request.param
    tracer = TracerProvider()
    with contextlib.ExitStack() as stack:
        if name == "embedded":
            made = sync_surface(name, Guard(safety_model=keyword_model))
        elif name == "instrumented":
            made = sync_surface(name, instrument(Guard(safety_model=keyword_model), tracer_provider=tracer))
        elif name in ("uvicorn", "ray"):
            url = request.getfixturevalue(f"{name}_url")
            made = sync_surface(name, stack.enter_context(GuardrailClient(url)))
        elif name == "async":
            made = async_surface(name, AsyncGuardrailClient(request.getfixturevalue("uvicorn_url")))
        elif name == "instrumented_async":
            client = AsyncGuardrailClient(request.getfixturevalue("uvicorn_url"))
            made = async_surface(name, instrument(client, tracer_provider=tracer))
        else:  # pragma: no cover - a new surface needs its branch here
            raise AssertionError(f"unknown surface {name}")
        yield made
        if name in ("async", "instrumented_async"):
            made.guard.close()
    tracer.shutdown()
