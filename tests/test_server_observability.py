"""Metrics, logs and the Host allow-list over real HTTP: labels are route templates, junk paths
cannot grow /metrics or forge log lines, OpenMetrics on request, DNS rebinding refused."""

from __future__ import annotations

import argparse
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import Settings, create_app
from guardrail.server.cli import add_serve_command
from tests.test_server_support import ServerThread, make_model


@pytest.fixture(scope="module")
def srv(tokenizer: Any) -> Iterator[ServerThread]:
    with ServerThread(create_app(Settings(allowed_hosts=["app.internal"]), make_model(tokenizer))) as running:
        yield running


@pytest.fixture()
def http(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=30) as client:
        yield client


def _junk(http: httpx.Client, n: int) -> None:
    for _ in range(n):
        token = secrets.token_hex(8)
        assert http.get(f"/junk/{token}").status_code == 404
        assert http.post(f"/v1/sessions/sess_{token}/chunks", json={"text": "x"}).status_code == 404
        http.delete(f"/v1/sessions/{token}")


def test_junk_paths_do_not_grow_metrics(http: httpx.Client) -> None:
    _junk(http, 3)  # every label combination the junk can make exists now
    http.get("/metrics")  # and the scrape's own
    before = http.get("/metrics").text.splitlines()
    _junk(http, 300)
    after = http.get("/metrics").text.splitlines()
    assert len(after) == len(before), set(after) - set(before)
    text = "\n".join(after)
    assert 'route="/v1/sessions/{session_id}/chunks"' in text and 'route="unmatched"' in text
    assert "junk" not in text and "sess_" not in text


def test_label_is_the_route_template(http: httpx.Client) -> None:
    sid = http.post("/v1/sessions", json={"prompt": "hi"}).json()["id"]
    http.post(f"/v1/sessions/{sid}/chunks", json={"text": "hello "})
    text = http.get("/metrics").text
    chunks = 'route="/v1/sessions/{session_id}/chunks"'
    assert f'guardrail_requests_total{{method="POST",{chunks},status="200"}}' in text
    assert sid not in text


def test_metric_names_kept_and_process_metrics_added(http: httpx.Client) -> None:
    http.post("/v1/check", json={"prompt": "hi"})
    response = http.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    for name in ("guardrail_requests_total", "guardrail_request_duration_seconds_bucket",
                 "guardrail_checks_total", "guardrail_verdict_latency_seconds_count",
                 "guardrail_batch_size_bucket", "guardrail_step_duration_seconds_sum",
                 "guardrail_rejected_total", "guardrail_active_sessions", "guardrail_active_streams",
                 "guardrail_queue_depth", "guardrail_session_memory_bytes",
                 "process_resident_memory_bytes", "python_info"):
        assert f"\n{name}" in text, name
    assert "# TYPE guardrail_intercepts_total counter" in text
    assert "# TYPE guardrail_sessions_evicted_total counter" in text
    assert "# TYPE guardrail_upstream_errors_total counter" in text


def test_openmetrics_is_negotiated(http: httpx.Client) -> None:
    response = http.get("/metrics", headers={"accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.endswith("# EOF\n") and "guardrail_checks_total" in response.text


def test_paths_are_escaped_in_logs(http: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guardrail.server")
    forged = "2026-01-01 00:00:00 INFO guardrail.server: POST /v1/check -> 200 (1.0 ms)"
    http.get("/x%0A" + forged.replace(" ", "%20") + "%0D%1B[31m")
    lines = [r.getMessage() for r in caplog.records if r.name == "guardrail.server"]
    assert any("unmatched" in line and "\\n" in line for line in lines), lines
    for line in lines:
        assert "\n" not in line and "\r" not in line and "\x1b" not in line


@pytest.mark.parametrize(("host", "status"), [
    ("evil.example", 421), ("evil.example:80", 421), ("127.0.0.1.evil.example", 421), ("", 421),
    ("localhost", 200), ("127.0.0.1:9", 200), ("[::1]:8000", 200), ("app.internal", 200),
    ("APP.internal:443", 200),
])
def test_host_allow_list_without_a_key(http: httpx.Client, host: str, status: int) -> None:
    response = http.post("/v1/check", json={"prompt": "hi"}, headers={"host": host})
    assert response.status_code == status, response.text
    if status == 421:
        assert response.json()["error"]["code"] == "host_not_allowed"
        assert http.get("/healthz", headers={"host": host}).status_code == 200  # probes stay open


def test_with_a_key_any_host_is_served(tokenizer: Any) -> None:
    app = create_app(Settings(api_key="k"), make_model(tokenizer))
    with ServerThread(app) as keyed, httpx.Client(base_url=keyed.url, timeout=30) as c:
        headers = {"host": "evil.example", "authorization": "Bearer k"}
        assert c.post("/v1/check", json={"prompt": "hi"}, headers=headers).status_code == 200


def test_star_allows_any_host_and_flags_parse(tokenizer: Any) -> None:
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    args = parser.parse_args(["serve", "--allowed-host", "a.example", "--allowed-host", "*"])
    assert args.allowed_host == ["a.example", "*"]
    with ServerThread(create_app(Settings(allowed_hosts=["*"]), make_model(tokenizer))) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as c:
        assert c.post("/v1/check", json={"prompt": "hi"}, headers={"host": "x.example"}).status_code == 200
