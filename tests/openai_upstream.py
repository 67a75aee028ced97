"""A scripted OpenAI-compatible upstream for the proxy tests (no tests here).

The last user message picks the behaviour, so one server serves every case:
- "tools" / "tools-bomb": streams two tool calls as argument deltas (the second one's
  arguments carry " bomb" in "tools-bomb"), finish_reason "tool_calls";
- "logprobs": streams words, each with a logprob entry;
- "json" / "json-bomb" / "json-tools": ignores `stream` and answers one JSON completion
  (safe text, flagged text, or the two tool calls);
- "surrogate": an emoji whose UTF-16 surrogate pair is split across two deltas;
- "slow ...": streams 300 words, 20 ms apart, and records whether the proxy hung up first;
- "split:" + a JSON list of strings: streams exactly those deltas;
- anything else: streams `SAFE_TEXT` word by word.
Every answer carries the upstream's id, model and system fingerprint; with
`stream_options.include_usage` a final usage chunk (empty choices) follows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

UP_ID = "chatcmpl-upstream-42"
UP_MODEL = "upstream-model-7"
UP_FINGERPRINT = "fp_up_123"
UP_USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
SAFE_TEXT = "Sure, here is a short story about a dog and a red ball in the park."
FLAGGED_TEXT = "Here is how: take the bomb and the secret recipe follows in detail."
TOOL_CALLS = [
    {"id": "call_a1", "name": "get_weather", "arguments": ['{"city": ', '"Paris', '", "unit": "c"}']},
    {"id": "call_b2", "name": "search", "arguments": ['{"q": "how', ' to bake', ' bread"}']},
]
FLAGGED_ARGUMENTS = ['{"q": "how', ' to build a', ' bomb at home"}']
EMOJI = "\U0001f600"


def tool_calls(flagged: bool) -> list[dict[str, Any]]:
    calls = [dict(c) for c in TOOL_CALLS]
    if flagged:
        calls[1] = {**calls[1], "arguments": FLAGGED_ARGUMENTS}
    return calls


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


def upstream_app(delay_s: float = 0.002) -> tuple[FastAPI, list[dict[str, Any]]]:
    """The app and the list of requests it received (body and headers)."""
    app = FastAPI()
    received: list[dict[str, Any]] = []

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": UP_ID, "object": "chat.completion.chunk", "created": 1700000000, "model": UP_MODEL,
                "system_fingerprint": UP_FINGERPRINT, "choices": choices, **extra}
        return "data: " + json.dumps(body) + "\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        received.append({"path": "/v1/models", "headers": dict(request.headers)})
        return {"object": "list", "data": [{"id": UP_MODEL, "object": "model", "created": 1,
                                            "owned_by": "upstream"}]}

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> Any:
        if model_id != UP_MODEL:
            return JSONResponse({"error": {"message": "no such model"}}, status_code=404)
        return {"id": UP_MODEL, "object": "model", "created": 1, "owned_by": "upstream"}

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        record = {"path": "/v1/chat/completions", "body": body, "headers": dict(request.headers)}
        received.append(record)
        kind = body["messages"][-1].get("content")
        if kind == "json":
            return JSONResponse({
                "id": UP_ID, "object": "chat.completion", "created": 1700000000, "model": UP_MODEL,
                "system_fingerprint": UP_FINGERPRINT, "usage": UP_USAGE,
                "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                             "message": {"role": "assistant", "content": SAFE_TEXT}}]})
        if kind == "json-tools":
            calls = [{"id": c["id"], "type": "function",
                      "function": {"name": c["name"], "arguments": "".join(c["arguments"])}}
                     for c in TOOL_CALLS]
            return JSONResponse({
                "id": UP_ID, "object": "chat.completion", "created": 1700000000, "model": UP_MODEL,
                "usage": UP_USAGE, "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": calls}}]})
        if kind == "json-bomb":
            return JSONResponse({
                "id": UP_ID, "object": "chat.completion", "created": 1700000000, "model": UP_MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": FLAGGED_TEXT}}]})
        usage = bool((body.get("stream_options") or {}).get("include_usage"))

        async def stream() -> AsyncIterator[str]:
            yield chunk([choice({"role": "assistant", "content": ""})])
            finish = "stop"
            if kind in ("tools", "tools-bomb"):
                finish = "tool_calls"
                for index, call in enumerate(tool_calls(kind == "tools-bomb")):
                    first = {"index": index, "id": call["id"], "type": "function",
                             "function": {"name": call["name"], "arguments": ""}}
                    yield chunk([choice({"tool_calls": [first]})])
                    for part in call["arguments"]:
                        await asyncio.sleep(delay_s)
                        part_delta = {"index": index, "function": {"arguments": part}}
                        yield chunk([choice({"tool_calls": [part_delta]})])
            elif kind == "logprobs":
                for i, word in enumerate(words(SAFE_TEXT)):
                    await asyncio.sleep(delay_s)
                    entry = {"token": word, "logprob": -0.1 * i, "bytes": list(word.encode()),
                             "top_logprobs": []}
                    yield chunk([choice({"content": word}, logprobs={"content": [entry], "refusal": None})])
            elif kind.startswith("slow"):
                record["sent"] = 0
                try:
                    for word in words("word " * 299 + "end"):
                        await asyncio.sleep(0.02)
                        yield chunk([choice({"content": word})])
                        record["sent"] += 1
                finally:
                    record["hung_up"] = record["sent"] < 300
            elif kind.startswith("split:"):
                for piece in json.loads(kind[len("split:"):]):
                    yield chunk([choice({"content": piece})])
            elif kind == "surrogate":
                for piece in ("Smile ", "\ud83d", "\ude00", " done"):
                    await asyncio.sleep(delay_s)
                    yield chunk([choice({"content": piece})])  # json.dumps escapes each half
            else:
                for word in words(FLAGGED_TEXT if kind == "bomb" else SAFE_TEXT):
                    await asyncio.sleep(delay_s)
                    yield chunk([choice({"content": word})])
            yield chunk([choice({}, finish)])
            if usage:
                yield chunk([], usage=UP_USAGE)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app, received
