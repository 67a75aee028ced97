"""Security promises: the key on every route, constant-time compare, limits, bind, CORS, no text leaks."""

from __future__ import annotations

import argparse
import hmac
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount

from guardrail.server import Settings, create_app
from guardrail.server.cli import add_serve_command
from tests.test_server_support import ServerThread, make_model

KEY = "k3y-for-tests"
AUTH = {"authorization": f"Bearer {KEY}"}
HEALTH = {"/healthz", "/readyz"}
FLAG_NONE = {"threshold": 1.0, "tau": 1, "hold_back": 0}


@pytest.fixture(scope="module")
def keyed(tokenizer: Any) -> Iterator[tuple[ServerThread, Any]]:
    app = create_app(Settings(api_key=KEY, max_body_bytes=4096, max_session_tokens=40,
                              allow_request_relaxation=True), make_model(tokenizer))
    with ServerThread(app) as srv:
        yield srv, app


def _routes(routes: list[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route with its full path, including those of included routers (however nested)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _routes(inner.routes, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix + route.path, route


def _requests(app: Any) -> list[tuple[str, str, bool]]:
    """(method, concrete path, public?) for every route the app has, read from the app itself."""
    out = []
    for full_path, route in _routes(app.routes):
        if isinstance(route, Mount):
            static = Path(route.app.directory)  # type: ignore[attr-defined]
            files = sorted(p.name for p in static.iterdir() if p.is_file())
            out += [("GET", f"{full_path}/{name}", True) for name in files[:3]]
            continue
        path = re.sub(r"\{[^}]+\}", "sess_x", full_path)
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            # Public: the health probes, and the chat page's static files (GET; they hold no data).
            public = path in HEALTH or (method in ("GET", "HEAD") and path == "/")
            out.append((method, path, public))
    return out


def test_key_is_required_on_every_route_but_health(keyed: tuple[ServerThread, Any]) -> None:
    srv, app = keyed
    seen = _requests(app)
    paths = {p for _, p, _ in seen}
    assert {"/v1/check", "/v1/sessions", "/metrics", "/openapi.json", "/docs"} <= paths  # really enumerated
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for method, path, public in seen:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {KEY}"},
                            {"authorization": KEY}, {"authorization": f"Bearer {KEY}x"}):
                status = c.request(method, path, headers=headers, json={}).status_code
                if public:
                    assert status != 401, (method, path)
                else:
                    assert status == 401, (method, path, headers)
            assert c.request(method, path, headers=AUTH, json={}).status_code != 401, (method, path)


def test_key_is_compared_in_constant_time(keyed: tuple[ServerThread, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from guardrail.server import middleware

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(middleware.hmac, "compare_digest", spy)
    srv, _ = keyed
    with httpx.Client(base_url=srv.url) as c:
        for token in ("x", KEY[:-1], KEY + "x", "y" * len(KEY), KEY):
            c.post("/v1/check", json={"prompt": "hi"}, headers={"authorization": f"Bearer {token}"})
    assert [a for a, _ in calls] == [t.encode() for t in ("x", KEY[:-1], KEY + "x", "y" * len(KEY), KEY)]
    assert all(b == KEY.encode() for _, b in calls)


def test_limits_answer_413_or_422_naming_the_limit(keyed: tuple[ServerThread, Any]) -> None:
    srv, _ = keyed
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as c:
        big = c.post("/v1/check", json={"prompt": "x" * 5000})
        assert big.status_code == 413 and "4096" in big.json()["error"]["message"]
        sid = c.post("/v1/sessions", json={"prompt": "p", "config": FLAG_NONE}).json()["id"]
        chunk = c.post(f"/v1/sessions/{sid}/chunks", json={"text": "y" * 5000})
        assert chunk.status_code == 413 and "4096" in chunk.json()["error"]["message"]
        for _ in range(10):
            last = c.post(f"/v1/sessions/{sid}/chunks", json={"text": " one two three four five"})
            if last.status_code != 200:
                break
        assert last.status_code == 413 and "40 response tokens" in last.json()["error"]["message"]
        wrong = c.post("/v1/check", json={"prompt": "hi", "config": {"threshold": 7}})
        assert wrong.status_code == 422 and "threshold" in wrong.json()["error"]["message"]
        many = c.post("/v1/generate", json={"prompt": "hi", "max_new_tokens": 10**6})
        assert many.status_code == 422 and "1024" in many.json()["error"]["message"]


def test_binds_loopback_by_default() -> None:
    assert Settings().host == "127.0.0.1"
    parser = argparse.ArgumentParser()
    add_serve_command(parser.add_subparsers())
    assert parser.parse_args(["serve"]).host == "127.0.0.1"


def test_no_cors_unless_configured(keyed: tuple[ServerThread, Any], tokenizer: Any) -> None:
    srv, _ = keyed
    preflight = {"origin": "http://evil.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "authorization"}
    with httpx.Client(base_url=srv.url) as c:
        assert "access-control-allow-origin" not in c.options("/v1/check", headers=preflight).headers
        plain = c.post("/v1/check", json={"prompt": "hi"}, headers={**AUTH, "origin": "http://evil.example"})
        assert "access-control-allow-origin" not in plain.headers
    app = create_app(Settings(api_key=KEY, cors_origins=["http://app.example"]), make_model(tokenizer))
    with ServerThread(app) as allowed, httpx.Client(base_url=allowed.url) as c:
        ok = c.options("/v1/check", headers={**preflight, "origin": "http://app.example"})
        assert ok.headers.get("access-control-allow-origin") == "http://app.example"
        assert "access-control-allow-origin" not in c.options("/v1/check", headers=preflight).headers


def test_chat_page_works_with_a_key(keyed: tuple[ServerThread, Any]) -> None:
    srv, app = keyed
    if not any(path == "/" for path, _ in _routes(app.routes)):
        pytest.skip("this build has no chat page")
    with httpx.Client(base_url=srv.url) as c:
        page = c.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        scripts = ["/" + s for s in re.findall(r'src="/?(static/[^"]+\.js)"', page.text)]
        assert scripts and all(c.get(s).status_code == 200 for s in scripts)
        assert any("Authorization" in c.get(s).text for s in scripts)  # the page sends the key
        assert c.post("/v1/check", json={"prompt": "hi"}, headers=AUTH).status_code == 200


def test_no_prompt_or_response_text_in_logs_spans_or_metrics(tokenizer: Any,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from guardrail.guard import Guard
    from guardrail.tracing import instrument
    from guardrail.types import GuardConfig

    sentinel = "zq7SENTINELxv"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    caplog.set_level(logging.DEBUG)  # every logger, every level
    with ServerThread(create_app(Settings(allow_request_relaxation=True), make_model(tokenizer))) as srv:
        guard = instrument(Guard(backend=srv.url, config=GuardConfig(**FLAG_NONE)), tracer_provider=provider)
        text = f"before {sentinel} after"
        guard.check_prompt(text)
        guard.check_response(text, text)
        session = guard.session(text)
        for piece in (f"the answer says {sentinel[:5]}", f"{sentinel[5:]} and more ", text):
            session.feed(piece)
        session.close()
        list(guard.generate(text, max_new_tokens=4))
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            chat = {"messages": [{"role": "user", "content": text}], "max_tokens": 3}
            assert c.post("/v1/chat/completions", json=chat).status_code == 200
            assert c.post("/v1/chat/completions", json={**chat, "stream": True}).status_code == 200
            assert c.post("/v1/check", json={"prompt": text, "config": {"tau": "x"}}).status_code == 422
            metrics = c.get("/metrics").text
    assert any(r.name.startswith("guardrail.server") for r in caplog.records), "server logs not captured"
    for record in caplog.records:
        assert sentinel not in record.getMessage(), record.name
        assert sentinel not in str(record.args or "") and sentinel not in str(record.exc_text or "")
    spans = exporter.get_finished_spans()
    assert spans, "no spans were exported"
    for span in spans:
        values = [*dict(span.attributes or {}).values(), span.name]
        values += [v for e in span.events for v in (e.name, *dict(e.attributes or {}).values())]
        assert not any(sentinel in str(v) for v in values), span.name
    assert sentinel not in metrics
