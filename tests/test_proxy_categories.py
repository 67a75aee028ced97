"""Through the proxy, the `guardrail` field names the categories the answer's checks fired.

A real upstream on loopback streams a story with a knife in it; the keyword stand-in fires
`violence` on " knife" (binary score unchanged), so with the default rules the answer passes
and names the category, and with a `block` rule the answer is cut where the knife appears.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from guardrail.server import create_app
from tests.test_server_support import ServerThread, fake_upstream, lax_settings, make_model

STORY = "Once upon a time the hero drew a knife and then everyone went home for a quiet dinner"
MESSAGES = [{"role": "user", "content": "Tell me a story"}]
CONFIG = {"tau": 1, "hold_back": 2, "threshold": 0.5}


@pytest.fixture(scope="module")
def proxy(tokenizer: Any) -> Iterator[ServerThread]:
    app, _ = fake_upstream(STORY)
    with ServerThread(app) as upstream:
        settings = lax_settings(upstream=upstream.url + "/v1")
        with ServerThread(create_app(settings, make_model(tokenizer))) as srv:
            yield srv


def _stream(url: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    body = {"model": "m", "messages": MESSAGES, "stream": True, "guardrail": config}
    with httpx.Client(timeout=30) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        lines = [ln[5:].strip() for ln in r.iter_lines() if ln.startswith("data:")]
    chunks = [json.loads(ln) for ln in lines[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    return text, chunks[-1]["guardrail"]


def test_a_flagged_category_passes_and_is_named(proxy: ServerThread) -> None:
    text, info = _stream(proxy.url, CONFIG)
    assert text == STORY and not info["intercepted"]
    assert info["response_flagged_categories"] == ["violence"]
    assert info["response_blocked_categories"] == []
    assert "violence" in info["flagged_categories"]


def test_a_blocked_category_cuts_the_answer_and_names_the_cut(proxy: ServerThread) -> None:
    text, info = _stream(proxy.url, {**CONFIG, "categories": {"violence": {"action": "block"}}})
    assert info["intercepted"] and "knife" not in text and "dinner" not in text
    assert info["intercept"]["flagged_categories"] == ["violence"]
    assert info["response_blocked_categories"] == ["violence"]


def test_without_a_category_word_nothing_is_named(tokenizer: Any) -> None:
    app, _ = fake_upstream("Once upon a time everyone went home for a quiet dinner")
    with ServerThread(app) as upstream, ServerThread(
            create_app(lax_settings(upstream=upstream.url + "/v1"), make_model(tokenizer))) as srv:
        _, info = _stream(srv.url, CONFIG)
    assert info["response_flagged_categories"] == [] and info["flagged_categories"] == []
