"""Proxy mode: forward chat completions upstream and moderate the streamed answer.

The upstream is always asked to stream. Its deltas feed a moderation session; only text
the session releases (covered by a safe check) goes to the client. When the session
intercepts, the upstream stream is closed, the refusal is sent and the last chunk carries
finish_reason "content_filter" and the intercept. Deltas that arrive while a check runs
are coalesced into the next chunk, so moderation keeps pace with a fast upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from guardrail.model.decoding import REFUSAL
from guardrail.server.chat import ChatDelta, ChatEnd, ChatEvent, ChatMeta
from guardrail.server.errors import APIError
from guardrail.server.moderation import SteppedSession
from guardrail.server.schemas import ChatCompletionRequest, GuardrailInfo
from guardrail.server.state import ServerState
from guardrail.types import GuardConfig, InterceptEvent, Verdict

log = logging.getLogger("guardrail.server")
_END = object()


class UpstreamError(RuntimeError):
    pass


class ProxyStream:
    """One proxied completion: open with `open()`, read `events()`, always `aclose()`."""

    def __init__(self, state: ServerState, request: ChatCompletionRequest, config: GuardConfig,
                 authorization: str | None) -> None:
        self.state = state
        self.request = request
        self.config = config
        self.authorization = authorization
        self.meta = ChatMeta(model=request.model or state.settings.model_name)
        self.session: SteppedSession | None = None
        self._start: asyncio.Task[Verdict] | None = None
        self._response: httpx.Response | None = None
        self._reader: asyncio.Task[None] | None = None
        self.finish_reason = "stop"
        self.usage: dict[str, int] | None = None

    def _upstream_request(self) -> httpx.Request:
        assert self.state.upstream is not None and self.state.settings.upstream is not None
        body = self.request.model_dump(exclude_none=True, exclude={"guardrail"})
        body["stream"] = True
        headers = {"accept": "text/event-stream"}
        key = self.state.settings.upstream_api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        elif self.authorization and not self.state.settings.api_key:
            headers["authorization"] = self.authorization  # the client's own upstream key
        url = self.state.settings.upstream.rstrip("/") + "/chat/completions"
        return self.state.upstream.build_request("POST", url, json=body, headers=headers)

    async def open(self) -> None:
        """Start the prompt check and the upstream request together; fail before any output."""
        batcher, _ = self.state.require()
        self.session = SteppedSession(batcher, self.state.text, self.config)
        self._start = asyncio.create_task(self.session.start(self.request.chat_messages()))
        assert self.state.upstream is not None
        try:
            self._response = await self.state.upstream.send(self._upstream_request(), stream=True)
        except httpx.HTTPError as exc:
            self.state.metrics.upstream_errors.inc()
            await self.aclose()
            raise APIError(502, f"upstream unreachable: {type(exc).__name__}", type="upstream_error",
                           code="upstream_unreachable") from exc
        if self._response.status_code != 200:
            self.state.metrics.upstream_errors.inc()
            detail = (await self._response.aread())[:500].decode("utf-8", "replace")
            status = self._response.status_code
            await self.aclose()
            raise APIError(502, f"upstream answered {status}: {detail}", type="upstream_error",
                           code="upstream_status")

    async def aclose(self) -> None:
        """Idempotent: stop reading, drop the prompt check, release the upstream connection."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        if self._start is not None and not self._start.done():
            self._start.cancel()
            with contextlib.suppress(BaseException):
                await self._start
        if self._response is not None:
            await self._response.aclose()

    async def _read_upstream(self, out: asyncio.Queue[Any]) -> None:
        """Parse the upstream's SSE into text deltas on `out`; `_END` or an exception ends it."""
        assert self._response is not None
        try:
            async for line in self._response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise UpstreamError(str(chunk["error"].get("message", chunk["error"])))
                if chunk.get("usage"):
                    self.usage = chunk["usage"]
                if chunk.get("model"):
                    self.meta.model = chunk["model"]
                for choice in chunk.get("choices") or []:
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        out.put_nowait(content)
            out.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            out.put_nowait(exc)

    def _intercept(self, index: int, score: float, stage: str) -> list[ChatEvent]:
        assert self.session is not None
        self.state.metrics.intercepts.inc(source="proxy")
        event = InterceptEvent(index=index, score=score, action=self.config.action,
                               stage=stage)  # type: ignore[arg-type]
        info = GuardrailInfo(intercepted=True, intercept=event, prompt=self.session.prompt_verdict,
                             checks=self.session.checks, mode="proxy")
        refusal = [ChatDelta(REFUSAL)] if self.config.action == "refuse" else []
        return [*refusal, ChatEnd("content_filter", info, self.usage)]

    async def events(self) -> AsyncIterator[ChatEvent]:
        """Moderated events; the upstream is closed when they end, however they end."""
        try:
            async for event in self._events():
                yield event
        finally:
            await self.aclose()

    async def _events(self) -> AsyncIterator[ChatEvent]:
        assert self.session is not None and self._start is not None
        session = self.session
        prompt = await self._start
        if self.config.check_prompt and prompt.label == "unsafe":
            for event in self._intercept(0, prompt.score, "prompt"):
                yield event
            return
        deltas: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_upstream(deltas))
        ended = False
        while not ended:
            items = [await deltas.get()]
            while not deltas.empty():  # coalesce what arrived during the last check
                items.append(deltas.get_nowait())
            texts = [i for i in items if isinstance(i, str)]
            failure = next((i for i in items if isinstance(i, Exception)), None)
            ended = failure is not None or any(i is _END for i in items)
            if texts:
                verdict = await session.feed("".join(texts))
                if verdict.released:
                    yield ChatDelta(verdict.released)
                if verdict.intercepted:
                    for event in self._intercept(verdict.intercept_index or 0, verdict.score, "response"):
                        yield event
                    return
            if failure is not None:
                self.state.metrics.upstream_errors.inc()
                log.warning("upstream stream failed: %s", type(failure).__name__)
                info = GuardrailInfo(intercepted=False, prompt=prompt, checks=session.checks, mode="proxy")
                yield ChatEnd("error", info, error={"message": f"upstream stream failed: {failure}",
                                                    "type": "upstream_error", "code": "upstream_stream"})
                return
        verdict = await session.close()
        if verdict.released:
            yield ChatDelta(verdict.released)
        if verdict.intercepted:
            for event in self._intercept(verdict.intercept_index or 0, verdict.score, "response"):
                yield event
            return
        info = GuardrailInfo(intercepted=False, prompt=prompt, checks=session.checks, mode="proxy")
        yield ChatEnd(self.finish_reason, info, self.usage)
