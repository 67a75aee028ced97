"""Bad input gets a 4xx naming the problem and changes no state: over real HTTP on loopback.

Lone surrogates can travel in JSON (`"\\ud800"`) but are no Unicode text; integers beyond
int64 overflow torch; the engine's own input errors map to 422 (a limit to 413) in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.model.prompts import InputError
from guardrail.server import Settings, create_app
from guardrail.server.errors import input_error
from tests.test_server_support import ServerThread, make_model

SURROGATE = "\\ud800"  # as it appears inside a JSON string: a lone high surrogate


@pytest.fixture(scope="module")
def http(tokenizer: Any) -> Iterator[httpx.Client]:
    with ServerThread(create_app(Settings(), make_model(tokenizer))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def _raw(client: httpx.Client, path: str, body: str) -> httpx.Response:
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


CASES = [
    ("/v1/check", '{"prompt": "hi ' + SURROGATE + ' there"}', "prompt"),
    ("/v1/check", '{"messages": [{"role": "user", "content": "a' + SURROGATE + '"}]}', "messages.0.content"),
    ("/v1/check", '{"prompt": [{"role": "user", "content": "ok"}, {"role": "assistant", "content": "'
     + SURROGATE + '"}]}', "prompt.1.content"),
    ("/v1/check", '{"prompt": "hi", "response": "x' + SURROGATE + '"}', "response"),
    ("/v1/sessions", '{"prompt": "' + SURROGATE + '"}', "prompt"),
    ("/v1/generate", '{"prompt": "hi", "prefill": "Sure' + SURROGATE + '", "max_new_tokens": 2}', "prefill"),
]


@pytest.mark.parametrize(("path", "body", "field"), CASES)
def test_lone_surrogate_is_422_naming_the_field(http: httpx.Client, path: str, body: str, field: str) -> None:
    response = _raw(http, path, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}: lone surrogate U+D800")
    assert http.get("/readyz").status_code == 200


def test_surrogate_pair_is_fine(http: httpx.Client) -> None:
    assert _raw(http, "/v1/check", '{"prompt": "smile \\ud83d\\ude00"}').status_code == 200


def _stream(client: httpx.Client, chunks: list[str]) -> list[dict[str, Any]]:
    """Feed raw JSON chunk bodies to a new session, then close; the 200 answers, latency dropped."""
    sid = client.post("/v1/sessions", json={"prompt": "Tell me a story"}).json()["id"]
    answers = []
    for chunk in chunks:
        response = _raw(client, f"/v1/sessions/{sid}/chunks", chunk)
        if response.status_code == 200:
            answers.append(response.json())
        else:
            assert response.status_code == 422 and response.json()["error"]["param"] == "text"
    answers.append(client.post(f"/v1/sessions/{sid}/close").json())
    for answer in answers:
        answer.pop("latency_ms")
    return answers


def test_failed_chunk_leaves_the_session_as_if_it_never_came(http: httpx.Client) -> None:
    good = [json.dumps({"text": "Once upon a time"}), json.dumps({"text": " a dog found a ball."})]
    bad = '{"text": " the ' + SURROGATE + ' end"}'
    clean = _stream(http, good)
    with_bad = _stream(http, [good[0], bad, good[1]])
    assert with_bad == clean
    assert "".join(a["released"] for a in clean) == "Once upon a time a dog found a ball."


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "hi", "seed": 2**70}, "seed"),
    ({"prompt": "hi", "seed": -(2**70)}, "seed"),
    ({"prompt": "hi", "max_new_tokens": 2**70}, "max_new_tokens"),
])
def test_integers_beyond_int64_are_422(http: httpx.Client, body: dict[str, Any], field: str) -> None:
    response = http.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["param"] == field and field in response.json()["error"]["message"]


@pytest.mark.parametrize("seed", [2**63 - 1, -1, 0])
def test_int64_seeds_generate(http: httpx.Client, seed: int) -> None:
    body = {"prompt": "hi", "seed": seed, "temperature": 1.0, "max_new_tokens": 2}
    with http.stream("POST", "/v1/generate", json=body) as response:
        text = response.read().decode()
    assert response.status_code == 200 and "event: done" in text and "event: error" not in text


def test_engine_input_errors_are_422(http: httpx.Client) -> None:
    empty = http.post("/v1/check", json={"prompt": "   "})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "invalid_input"
    assert "empty" in empty.json()["error"]["message"]


def test_limit_errors_are_413_naming_the_limit() -> None:
    class TooLong(InputError):
        def __init__(self, message: str, limit: int) -> None:
            super().__init__(message)
            self.limit = limit

    limited = input_error(TooLong("session holds too many tokens", 32768))
    assert limited.status == 413 and "32768" in limited.message and limited.code == "limit_exceeded"
    class LimitError(InputError):  # the engine's limit error: its message names the limit
        pass

    named = input_error(LimitError("the response would exceed this session's limit of 40 tokens"))
    assert named.status == 413 and "40 tokens" in named.message
    plain = input_error(InputError("text is empty"))
    assert plain.status == 422 and plain.code == "invalid_input"
