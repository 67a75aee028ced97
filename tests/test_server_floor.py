"""The same verdict everywhere, with an operator floor: over real HTTP on loopback.

A request without a config gets the server's calibrated defaults; a partial config overrides
only the fields it names; a laxer config is refused (422 naming the field and the server's
value) unless the operator allowed relaxation.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from guardrail.server.cli import add_serve_command
from guardrail.server.floor import relaxations
from guardrail.types import GuardConfig
from tests.test_server_support import ServerThread, make_model

CALIBRATED = 0.7  # the head's threshold, distinct from GuardConfig's 0.5 default


def _app(tokenizer: Any, **settings: Any) -> Any:
    model = make_model(tokenizer)
    model.head.config.threshold = CALIBRATED
    return create_app(Settings(**settings), model)


@pytest.fixture(scope="module")
def strict(tokenizer: Any) -> Iterator[httpx.Client]:
    with ServerThread(_app(tokenizer)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        yield c


def test_no_config_gets_the_calibrated_threshold(strict: httpx.Client) -> None:
    assert strict.post("/v1/check", json={"prompt": "hi"}).json()["threshold"] == CALIBRATED


def test_partial_config_keeps_the_other_fields(strict: httpx.Client) -> None:
    """Regression: a config with only `tau` used to reset the threshold to 0.5."""
    verdict = strict.post("/v1/check", json={"prompt": "hi", "config": {"tau": 1}}).json()
    assert verdict["threshold"] == CALIBRATED
    created = strict.post("/v1/sessions", json={"prompt": "hi", "config": {"hold_back": 8}}).json()
    assert created["config"]["threshold"] == CALIBRATED and created["config"]["hold_back"] == 8
    assert created["config"]["tau"] == GuardConfig().tau


LAXER = [
    ({"threshold": 0.9}, "threshold", "0.7"),
    ({"tau": 10}, "tau", "3"),
    ({"hold_back": 0}, "hold_back", "4"),
    ({"strategy": "first"}, "strategy", "'periodic'"),
    ({"period": 64}, "period", "4"),
    ({"window": 8}, "window", "None"),
    ({"check_prompt": False}, "check_prompt", "True"),
]


@pytest.mark.parametrize(("config", "field", "server_value"), LAXER)
def test_laxer_config_is_refused_naming_the_field(strict: httpx.Client, config: dict[str, Any],
                                                  field: str, server_value: str) -> None:
    before = _active_sessions(strict)
    bodies = [("/v1/check", {"prompt": "hi", "config": config}),
              ("/v1/sessions", {"prompt": "hi", "config": config}),
              ("/v1/generate", {"prompt": "hi", "max_new_tokens": 2, "config": config})]
    for path, body in bodies:
        response = strict.post(path, json=body)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "config_not_allowed" and error["param"] == f"config.{field}"
        assert f"config.{field}" in error["message"] and server_value in error["message"]
    assert _active_sessions(strict) == before  # the refused session left nothing behind


def _active_sessions(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("guardrail_active_sessions "):
            return float(line.split()[1])
    raise AssertionError("no guardrail_active_sessions metric")


def test_stricter_config_is_accepted(strict: httpx.Client) -> None:
    config = {"threshold": 0.1, "tau": 1, "hold_back": 16, "strategy": "each", "period": 64,
              "window": None, "action": "stop"}
    verdict = strict.post("/v1/check", json={"prompt": "hi", "config": config})
    assert verdict.status_code == 200 and verdict.json()["threshold"] == 0.1
    created = strict.post("/v1/sessions", json={"prompt": "hi", "config": {"strategy": "annealing"}})
    assert created.status_code == 201
    window = strict.post("/v1/check", json={"prompt": "hi", "config": {"window": 10**6}})
    assert window.status_code == 200  # a window as wide as the context is no window


def test_operator_can_allow_relaxation(tokenizer: Any) -> None:
    with ServerThread(_app(tokenizer, allow_request_relaxation=True)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        lax = {"threshold": 1.0, "tau": 64, "hold_back": 0, "strategy": "first", "check_prompt": False}
        verdict = c.post("/v1/check", json={"prompt": "hi", "config": lax})
        assert verdict.status_code == 200 and verdict.json()["threshold"] == 1.0
        assert c.post("/v1/check", json={"prompt": "hi"}).json()["threshold"] == CALIBRATED


def test_cli_flag_sets_the_setting() -> None:
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    assert parser.parse_args(["serve"]).allow_request_relaxation is False
    assert parser.parse_args(["serve", "--allow-request-relaxation"]).allow_request_relaxation is True
    assert Settings().allow_request_relaxation is False


def test_strategy_order_and_period_rule() -> None:
    server = GuardConfig(strategy="periodic", period=4)
    for strategy, laxer in (("first", True), ("periodic", False), ("annealing", False), ("each", False)):
        found = [r.field for r in relaxations(server, GuardConfig(strategy=strategy))]
        assert ("strategy" in found) is laxer, strategy
    assert [r.field for r in relaxations(server, GuardConfig(strategy="each", period=64))] == []
    assert [r.field for r in relaxations(server, GuardConfig(strategy="annealing", period=8))] == ["period"]
    first = GuardConfig(strategy="first")
    assert relaxations(first, GuardConfig(strategy="periodic", period=64)) == []
    assert [r.field for r in relaxations(GuardConfig(window=16), GuardConfig(window=8))] == ["window"]
    assert relaxations(GuardConfig(window=16), GuardConfig(window=None)) == []
