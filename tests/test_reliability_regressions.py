"""Inputs the fuzzer once turned into 500s: each must now get a clean answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from tests.test_server_support import ServerThread, make_model


@pytest.fixture(scope="module")
def http(tokenizer: Any) -> Iterator[httpx.Client]:
    with ServerThread(create_app(Settings(max_new_tokens=8), make_model(tokenizer, keyword=False))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def test_window_wider_than_any_context_is_not_a_500(http: httpx.Client) -> None:
    body = {"prompt": "hi", "response": "there", "config": {"window": 2**70}}
    assert http.post("/v1/check", json=body).status_code == 200


@pytest.mark.parametrize(("temperature", "top_p"), [(5e-324, 1.0), (1e-300, 1.0), (1e-9, 1.0), (1.0, 5e-324),
                                                     (0.7, 1e-50)])
def test_vanishing_temperature_or_top_p_is_not_a_500(http: httpx.Client, temperature: float,
                                                     top_p: float) -> None:
    chat = {"messages": [{"role": "user", "content": "hi"}], "temperature": temperature, "top_p": top_p,
            "max_tokens": 4}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    with http.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as response:
        data = [ln[5:].strip() for ln in response.iter_lines() if ln.startswith("data:")]
    assert data[-1] == "[DONE]" and not any("error" in json.loads(d) for d in data[:-1])
    body = {"prompt": "hi", "temperature": temperature, "top_p": top_p, "max_new_tokens": 4}
    with http.stream("POST", "/v1/generate", json=body) as response:
        assert not any(ln.startswith("event: error") for ln in response.iter_lines())
