"""The chat page shows which harm categories fired, prompt and answer apart, as badges.

Headless Chromium (see tests/test_chat_ui.py, whose browser fixture and helpers this reuses)
against two sidecars: one in local mode whose generations play scripted engine events (the
categories at chosen checks, so the badges are known in advance), and one in proxy mode with
the real default model in front of a scripted upstream, where a weapons request fires
`illicit` at the prompt check. A screenshot of the latter is saved as
artifacts/chat-categories.png.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from guardrail.server import create_app
from guardrail.server.routes import generate as generate_module
from tests.test_chat_ui import browser, save_screenshot, send, set_controls  # noqa: F401 (fixture)
from tests.test_server_support import ServerThread, fake_upstream, lax_settings, make_model
from tests.test_surface_categories import HARMFUL, ScriptedGeneration

pytestmark = pytest.mark.model


def badges(answer: Any, side: str) -> list[str]:
    row = answer.locator(f"[data-role='{side}-categories']")
    return [str(b.inner_text()) for b in row.locator(".badge").all()]


@pytest.fixture(scope="module")
def scripted_local(tokenizer: Any) -> Iterator[str]:
    patch = pytest.MonkeyPatch()
    patch.setattr(generate_module, "SteppedGeneration", ScriptedGeneration)
    try:
        with ServerThread(create_app(lax_settings(), make_model(tokenizer))) as srv:
            yield srv.url
    finally:
        patch.undo()


@pytest.fixture()
def local_page(browser: Any, scripted_local: str) -> Iterator[Any]:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(scripted_local + "/")
    page.wait_for_selector("body[data-ready='true']")
    yield page
    context.close()


def test_local_mode_badges_the_prompt_and_the_answer(local_page: Any) -> None:
    set_controls(local_page, threshold=1.0)
    whole = send(local_page, "whole")
    assert badges(whole, "prompt") == ["illicit"]
    assert badges(whole, "answer") == ["violence"]
    assert whole.get_attribute("data-categories") == "illicit violence"


def test_local_mode_marks_a_block_category_at_the_cut(local_page: Any) -> None:
    set_controls(local_page, threshold=1.0)
    cut = send(local_page, "cut")
    assert cut.locator("[data-role='intercept']").is_visible()
    assert badges(cut, "answer") == ["harassment", "violence", "illicit/violent (block)"]
    assert cut.locator("[data-role='prompt-categories']").is_hidden()
    blocked = send(local_page, "blocked-prompt")
    assert badges(blocked, "prompt") == ["illicit (block)"]


def test_local_mode_without_categories_shows_no_badges(local_page: Any) -> None:
    set_controls(local_page, threshold=1.0, max_tokens=4)
    plain = send(local_page, "Hello")
    assert plain.locator("[data-role='categories']").is_hidden()


@pytest.fixture(scope="module")
def real_proxy() -> Iterator[str]:
    """Proxy mode with the default model and shipped head, in front of a scripted upstream."""
    app, _ = fake_upstream()
    with ServerThread(app) as upstream, ServerThread(
            create_app(lax_settings(upstream=upstream.url + "/v1"))) as sidecar:
        yield sidecar.url


def test_proxy_mode_badges_the_prompts_categories(browser: Any, real_proxy: str) -> None:  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    page = context.new_page()
    try:
        page.set_default_timeout(180_000)
        page.goto(real_proxy + "/")
        page.wait_for_selector("body[data-mode='proxy']", timeout=180_000)
        set_controls(page, tau=1, hold_back=1)
        answer = send(page, HARMFUL)
        assert "illicit" in badges(answer, "prompt")
        assert "Intercepted at the prompt" in answer.inner_text()
        save_screenshot(page, "chat-categories.png")
    finally:
        context.close()
