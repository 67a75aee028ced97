"""Batched checks on /v1/check over real HTTP: order, equality with single checks, limits, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from tests.test_server_support import UNSAFE_WORD, ServerThread, make_model

ITEMS: list[dict[str, Any]] = [
    {"prompt": "How do I bake bread?"},
    {"prompt": f"Tell me about the{UNSAFE_WORD} squad"},
    {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
    {"prompt": "A question", "response": f"An answer with a{UNSAFE_WORD} in it"},
    {"prompt": "A much longer question about gardening, with tomatoes, beans and a little rain " * 3},
]


@pytest.fixture(scope="module")
def served(tokenizer: Any) -> Iterator[tuple[httpx.Client, Any]]:
    app = create_app(Settings(max_check_batch=8, max_prompt_tokens=200), make_model(tokenizer))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client, app


@pytest.fixture()
def http(served: tuple[httpx.Client, Any]) -> httpx.Client:
    return served[0]


def test_batch_answers_in_order_as_single_checks_do(served: tuple[httpx.Client, Any]) -> None:
    http, app = served
    singles = [http.post("/v1/check", json=item).json() for item in ITEMS]
    batcher = app.state.guardrail.batcher
    passes = batcher.passes
    response = http.post("/v1/check", json={"batch": ITEMS})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["label"] for r in results] == ["safe", "unsafe", "safe", "unsafe", "safe"]
    for single, batched in zip(singles, results, strict=True):
        assert batched["tokens"] == single["tokens"] and batched["threshold"] == single["threshold"]
        assert batched["score"] == pytest.approx(single["score"], abs=1e-5)
    assert batcher.passes - passes < len(ITEMS)  # the items shared forward passes


def test_batch_config_applies_to_every_item(http: httpx.Client) -> None:
    body = {"batch": ITEMS[:2], "config": {"threshold": 0.0}}
    results = http.post("/v1/check", json=body).json()["results"]
    assert [r["label"] for r in results] == ["unsafe", "unsafe"]
    assert {r["threshold"] for r in results} == {0.0}
    laxer = http.post("/v1/check", json={"batch": ITEMS[:2], "config": {"threshold": 0.9}})
    assert laxer.status_code == 422 and laxer.json()["error"]["code"] == "config_not_allowed"


@pytest.mark.parametrize(("body", "status", "needle"), [
    ({"prompt": "hi", "batch": [{"prompt": "x"}]}, 422, "exactly one"),
    ({"batch": [{"prompt": "x"}], "response": "y"}, 422, "inside the item"),
    ({"batch": []}, 422, "batch"),
    ({"batch": [{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}]}, 422, "exactly one"),
    ({"batch": [{"prompt": "x"}] * 9}, 413, "limit of 8"),
    ({"batch": [{"prompt": "ok"}, {"prompt": "   "}]}, 422, "batch.1.prompt: text is empty"),
    ({"batch": [{"prompt": "ok"}, {"prompt": "word " * 300}]}, 413, "batch.1.prompt is"),
])
def test_bad_batches_name_the_problem(http: httpx.Client, body: dict[str, Any], status: int,
                                      needle: str) -> None:
    response = http.post("/v1/check", json=body)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_lone_surrogate_in_a_batch_item_names_it(http: httpx.Client) -> None:
    raw = '{"batch": [{"prompt": "ok"}, {"prompt": "fine", "response": "bad \\udc00"}]}'
    response = http.post("/v1/check", content=raw.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "batch.1.response"


def test_single_form_is_unchanged(http: httpx.Client) -> None:
    verdict = http.post("/v1/check", json={"prompt": "hi"}).json()
    assert set(verdict) >= {"label", "score", "threshold", "tokens", "latency_ms"}
    assert "results" not in verdict


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guardrail.cli", *args], capture_output=True, text=True,
                          timeout=300)


def test_cli_check_groups_lines_into_batches_and_keeps_order(tmp_path: Path,
                                                             served: tuple[httpx.Client, Any]) -> None:
    """`guardrail check --input` against a sidecar (--backend) sends batches; output keeps the order."""
    http, _ = served
    rows = [{"prompt": f"question {i}"} for i in range(5)]
    rows[3] = {"prompt": "q", "response": f"a{UNSAFE_WORD}"}
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    result = _cli("check", "--input", str(source), "--output", str(out), "--backend", str(http.base_url),
                  "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    verdicts = [json.loads(line) for line in out.read_text().splitlines()]
    assert [v["label"] for v in verdicts] == ["safe", "safe", "safe", "unsafe", "safe"]
    singles = [http.post("/v1/check", json=r).json()["score"] for r in rows]
    assert [v["score"] for v in verdicts] == pytest.approx(singles, abs=1e-5)


def test_cli_uses_a_guards_batch_methods_per_group() -> None:
    from guardrail.cli import _check_rows
    from guardrail.types import Verdict

    calls: list[tuple[str, int]] = []

    def verdict(score: float) -> Verdict:
        return Verdict(label="safe", score=score, threshold=0.5, tokens=1)

    class BatchGuard:
        def check_prompts(self, prompts: list[str]) -> list[Verdict]:
            calls.append(("prompts", len(prompts)))
            return [verdict(float(p)) for p in prompts]

        def check_responses(self, pairs: list[tuple[str, str]]) -> list[Verdict]:
            calls.append(("responses", len(pairs)))
            return [verdict(float(p)) for p, _ in pairs]

    rows = [(1, {"prompt": "0.1"}), (2, {"prompt": "0.2", "response": "r"}), (3, {"prompt": "0.3"})]
    assert [v.score for v in _check_rows(BatchGuard(), rows, "in.jsonl")] == [0.1, 0.2, 0.3]
    assert calls == [("prompts", 2), ("responses", 1)]
