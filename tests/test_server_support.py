"""Helpers for the server and client tests: a real uvicorn server in a thread, a model whose
verdicts are deterministic, and a scripted OpenAI-compatible upstream (no tests here)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from guardrail.model.engine import SafetyModel
from guardrail.server import Settings
from guardrail.server.background import BackgroundServer, free_port  # noqa: F401  (re-exported for tests)
from tests.keyword_model import KeywordSafetyModel, _contains, tiny_parts  # noqa: F401  (re-exported for tests)

UNSAFE_WORD = " bomb"
SCRIPT = ("Sure, I can help with that. Here is a short story about a dog and a red ball in the park."
          " Then the bomb goes off with a loud bang and the secret recipe follows in detail.")
SAFE_PART = SCRIPT[: SCRIPT.index(" Then the bomb")]


def make_model(tokenizer: Any, *, keyword: bool = True, seed: int = 0) -> SafetyModel:
    lm, head = tiny_parts(tokenizer, seed=seed, lively_adapters=True)
    cls = KeywordSafetyModel if keyword else SafetyModel
    model = cls(lm, tokenizer, head, name="tiny")
    if keyword:
        ids = tokenizer(UNSAFE_WORD, add_special_tokens=False)["input_ids"]
        model.keyword_ids = [[int(i) for i in ids]]  # type: ignore[attr-defined]
    return model


class ServerThread(BackgroundServer):
    """A real uvicorn server on a free loopback port, run in a background thread."""

    def __init__(self, app: Any) -> None:
        super().__init__(app, start_timeout=30)


def fake_upstream(script: str = SCRIPT, delay_s: float = 0.005) -> tuple[Starlette, list[dict[str, Any]]]:
    """An OpenAI-compatible upstream that streams `script` word by word."""
    received: list[dict[str, Any]] = []
    words = script.split(" ")
    pieces = [words[0]] + [" " + w for w in words[1:]]

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + json.dumps({
            "id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 0, "model": "upstream-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }) + "\n\n"

    async def completions(request: Request) -> Response:
        body = await request.json()
        received.append({"body": body, "authorization": request.headers.get("authorization")})
        if body.get("messages", [{}])[-1].get("content") == "FAIL":
            return JSONResponse({"error": {"message": "upstream broke"}}, status_code=500)

        async def stream() -> AsyncIterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            for piece in pieces:
                await asyncio.sleep(delay_s)
                yield chunk({"content": piece})
            yield chunk({}, "stop")
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])]), received


def lax_settings(**overrides: Any) -> Settings:
    """Sidecar settings that accept configs laxer than the server's (tests pin such configs)."""
    return Settings(allow_request_relaxation=True, **overrides)
