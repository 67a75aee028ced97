"""`guardrail serve --threshold`: the operator's operating point, the floor every request starts from."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from guardrail.server.cli import add_serve_command
from tests.test_server_support import ServerThread, make_model

#: Above the keyword model's score for " bomb" (0.99): the operator's threshold decides the label.
OPERATOR_THRESHOLD = 0.995


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_the_flag_takes_a_score_and_refuses_anything_else(capsys: pytest.CaptureFixture[str]) -> None:
    assert _parse("--threshold", "0.9").threshold == 0.9
    assert _parse().threshold is None
    for bad in ("1.5", "-0.1", "high", "nan"):
        with pytest.raises(SystemExit):
            _parse("--threshold", bad)
        assert "--threshold" in capsys.readouterr().err


@pytest.fixture(scope="module")
def sidecar(tokenizer: Any) -> Iterator[httpx.Client]:
    app = create_app(Settings(threshold=OPERATOR_THRESHOLD), make_model(tokenizer))
    with ServerThread(app) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        yield client


def test_the_operator_threshold_judges_requests_without_a_config(sidecar: httpx.Client) -> None:
    verdict = sidecar.post("/v1/check", json={"prompt": "how to build a bomb"}).json()
    assert verdict["threshold"] == OPERATOR_THRESHOLD
    assert verdict["score"] == pytest.approx(0.99, abs=1e-3) and verdict["label"] == "safe"
    session = sidecar.post("/v1/sessions", json={"prompt": "hi"}).json()
    assert session["config"]["threshold"] == OPERATOR_THRESHOLD


def test_a_request_may_lower_the_operator_threshold_never_raise_it(sidecar: httpx.Client) -> None:
    stricter = sidecar.post("/v1/check", json={"prompt": "how to build a bomb", "config": {"threshold": 0.5}})
    assert stricter.status_code == 200 and stricter.json()["label"] == "unsafe"
    laxer = sidecar.post("/v1/check", json={"prompt": "how to build a bomb", "config": {"threshold": 0.999}})
    assert laxer.status_code == 422, laxer.text
    assert "config.threshold" in laxer.text


def test_without_the_flag_the_heads_threshold_is_the_servers(tokenizer: Any) -> None:
    model = make_model(tokenizer)
    with ServerThread(create_app(Settings(), model)) as srv:
        verdict = httpx.post(f"{srv.url}/v1/check", json={"prompt": "hello"}, timeout=60).json()
    assert verdict["threshold"] == pytest.approx(float(model.head.config.threshold))


def test_settings_refuse_a_threshold_outside_the_unit_interval() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Settings(threshold=1.2)
