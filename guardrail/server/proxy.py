"""Proxy mode: forward chat completions upstream and moderate the answer on its way back.

The upstream request starts at once, next to the prompt check; nothing is released before that
check says safe (a flagged prompt cancels the upstream request). When the upstream answers fast,
the prompt check waits a little (never longer than a pass of its own would take) for the first
words and checks them in its own pass, so the first release needs no second pass. The upstream is always asked
to stream, with usage. Its text deltas feed a moderation session; only text the session
releases (covered by safe checks) goes to the client, with the upstream's logprobs for it.
Tool calls are model output that reaches a tool: each call's streamed deltas are withheld,
its name and arguments checked as a response to the conversation, and the deltas released
unchanged only when every call is safe; a flagged call is never released and the stream is
intercepted. Every field the guard does not moderate (ids, model, system fingerprint, usage,
tool-call ids and indices, logprobs) passes through as the upstream sent it.

An upstream stream that ends without `[DONE]` or a finish reason, or sends a line that is not
an OpenAI chunk, ends as an error event (502 when not streamed), never as a clean stop. An
upstream that ignores `stream` and answers with one JSON completion is moderated the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from httpx_sse import EventSource

from guardrail.model.decoding import REFUSAL
from guardrail.server.chat import ChatDelta, ChatEnd, ChatEvent, ChatMeta, ChatToolCall, merge_tool_calls
from guardrail.server.driver import run_batched
from guardrail.server.errors import APIError
from guardrail.server.moderation import SteppedSession
from guardrail.server.routes.check import check_one
from guardrail.server.schemas import ChatCompletionRequest, FiredCategories, GuardrailInfo
from guardrail.server.state import ServerState
from guardrail.server.upstream_trace import UpstreamSpan
from guardrail.types import ChatMessage, ChunkVerdict, GuardConfig, InterceptEvent, Verdict

log = logging.getLogger("guardrail.server")


class UpstreamError(RuntimeError):
    pass


@dataclass
class UpstreamText:
    text: str
    logprobs: list[dict[str, Any]] | None = None


@dataclass
class UpstreamToolCall:
    delta: dict[str, Any]


class _End:
    pass


_END = _End()
UpstreamItem = UpstreamText | UpstreamToolCall | _End | Exception

FOLD_WAIT_CAP_S = 0.3  # the prompt check never waits longer than this for the first words
FOLD_SAVES = 0.75  # folding the first words saves about this share of a pass of their own


class UpstreamPace:
    """When an upstream's first words come: the first one's delay and the gap between the
    next ones, averaged over its recent streams. Lets the prompt check skip waiting for words
    that will come too late, before waiting to see."""

    def __init__(self) -> None:
        self.first_s: float | None = None
        self.gap_s = 0.0

    def observe(self, first_s: float, gap_s: float) -> None:
        if self.first_s is None:
            self.first_s, self.gap_s = first_s, gap_s
        else:
            self.first_s = 0.7 * self.first_s + 0.3 * first_s
            self.gap_s = 0.7 * self.gap_s + 0.3 * gap_s

    def due_s(self, deltas: int) -> float | None:
        """When `deltas` deltas are expected after the request (None: not seen yet)."""
        return None if self.first_s is None else self.first_s + (deltas - 1) * self.gap_s


_PACES: dict[str, UpstreamPace] = {}  # by upstream URL


@dataclass
class PromptChecked:
    """The prompt check, with the first upstream items it took and their chunk verdict
    (None when their text, if any, still has to be fed)."""

    verdict: Verdict
    items: list[UpstreamItem]
    chunk: ChunkVerdict | None


class SurrogateJoiner:
    """Joins a UTF-16 surrogate pair split across two deltas (JSON escapes can split one);
    a surrogate that stays alone becomes U+FFFD, so the text is always valid."""

    def __init__(self) -> None:
        self.carry = ""

    def push(self, text: str) -> str:
        text = self.carry + text
        self.carry = ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self.carry = text[:-1], text[-1]
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")

    def flush(self) -> str:
        out, self.carry = ("\ufffd" if self.carry else ""), ""
        return out


class LogprobLedger:
    """Keeps the upstream's logprob entries until the text they belong to is released."""

    def __init__(self) -> None:
        self.received = 0
        self.released = 0
        self.pending: deque[tuple[int, list[dict[str, Any]]]] = deque()
        self.seen = False

    def add(self, text: str, entries: list[dict[str, Any]] | None) -> None:
        self.received += len(text)
        if entries is not None:
            self.seen = True
            self.pending.append((self.received, entries))

    def release(self, text: str, *, everything: bool = False) -> list[dict[str, Any]] | None:
        self.released += len(text)
        out: list[dict[str, Any]] = []
        while self.pending and (everything or self.pending[0][0] <= self.released):
            out.extend(self.pending.popleft()[1])
        return out if self.seen and (out or text) else None


def _tool_call_delta(call: object) -> dict[str, Any]:
    """An upstream tool-call delta, unchanged, once it has the shape a client relies on."""
    if not isinstance(call, dict) or not isinstance(call.get("index", 0), int) or \
            not isinstance(call.get("function") or {}, dict):
        raise UpstreamError("upstream sent a malformed tool call")
    return call


class ProxyStream:
    """One proxied completion: open with `open()`, read `events()`, always `aclose()`."""

    def __init__(self, state: ServerState, request: ChatCompletionRequest, config: GuardConfig,
                 authorization: str | None, trace_headers: Mapping[str, str] | None = None) -> None:
        self.state = state
        self.request = request
        self.config = config
        self.authorization = authorization
        self.meta = ChatMeta(model=request.model or state.settings.model_name)
        self.fired = FiredCategories()  # categories that fired at the answer's checks
        self.messages: list[ChatMessage] = request.chat_messages()
        self.session: SteppedSession | None = None
        self._start: asyncio.Task[PromptChecked] | None = None
        self._response: httpx.Response | None = None
        self._reader: asyncio.Task[None] | None = None
        self._items: asyncio.Queue[UpstreamItem] = asyncio.Queue()
        self._span = UpstreamSpan(self.meta.model, trace_headers or {})
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._begun = 0.0  # loop time the prompt check and the upstream request started
        self._arrivals: list[float] = []  # loop times of the first text deltas
        self._pace = _PACES.setdefault(state.settings.upstream or "", UpstreamPace())

    def _upstream_request(self) -> httpx.Request:
        assert self.state.upstream is not None and self.state.settings.upstream is not None
        body = self.request.model_dump(mode="json", exclude_unset=True, exclude={"guardrail"})
        body["stream"] = True
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        headers = {"accept": "text/event-stream"}
        key = self.state.settings.upstream_api_key
        if key:
            headers["authorization"] = f"Bearer {key}"
        elif self.authorization and not self.state.settings.api_key:
            headers["authorization"] = self.authorization  # the client's own upstream key
        self._span.inject(headers)
        url = self.state.settings.upstream.rstrip("/") + "/chat/completions"
        return self.state.upstream.build_request("POST", url, json=body, headers=headers)

    async def open(self) -> None:
        """Start the prompt check and the upstream request together; fail before any output."""
        batcher, _ = self.state.require()
        self.session = SteppedSession(batcher, self.state.text, self.config)
        self._start = asyncio.create_task(self._check_prompt())
        assert self.state.upstream is not None
        try:
            self._response = await self.state.upstream.send(self._upstream_request(), stream=True)
        except httpx.HTTPError as exc:
            self.state.metrics.upstream_errors.inc()
            await self.aclose(f"unreachable: {type(exc).__name__}")
            raise APIError(502, f"upstream unreachable: {type(exc).__name__}", type="upstream_error",
                           code="upstream_unreachable") from exc
        if self._response.status_code != 200:
            self.state.metrics.upstream_errors.inc()
            detail = (await self._response.aread())[:500].decode("utf-8", "replace")
            status = self._response.status_code
            await self.aclose(f"status {status}")
            raise APIError(502, f"upstream answered {status}: {detail}", type="upstream_error",
                           code="upstream_status")
        # read (and buffer) the upstream while the prompt check runs: nothing is released yet
        self._reader = asyncio.create_task(self._read_upstream())

    async def aclose(self, error: str | None = None) -> None:
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
        self._span.end(error)

    # -- reading the upstream ------------------------------------------------------------------
    async def _read_upstream(self) -> None:
        """Parse the upstream's answer into items on the queue; `_END` or an exception ends it."""
        assert self._response is not None
        out = self._items
        try:
            content_type = self._response.headers.get("content-type", "")
            if "text/event-stream" in content_type:
                await self._read_stream(out)
            else:
                await self._read_completion(out)
            out.put_nowait(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            out.put_nowait(exc)

    def _take_meta(self, body: dict[str, Any]) -> None:
        if body.get("error"):
            error = body["error"]
            raise UpstreamError(str(error.get("message", error) if isinstance(error, dict) else error))
        for key in ("id", "model", "created", "system_fingerprint"):
            if body.get(key) is not None:
                setattr(self.meta, key, body[key])
        if body.get("usage"):
            self.usage = body["usage"]

    async def _read_stream(self, out: asyncio.Queue[UpstreamItem]) -> None:
        assert self._response is not None
        joiner = SurrogateJoiner()
        done = False
        async for sse in EventSource(self._response).aiter_sse():
            if sse.data == "[DONE]":
                done = True
                break
            if not sse.data:
                continue
            try:
                chunk = json.loads(sse.data)
            except ValueError:
                raise UpstreamError("upstream sent an event that is not JSON") from None
            if not isinstance(chunk, dict):
                raise UpstreamError("upstream sent an event that is not a chunk object")
            self._take_meta(chunk)
            for choice in chunk.get("choices") or []:
                if choice.get("index", 0) != 0:
                    continue  # one choice (n=1)
                delta = choice.get("delta") or {}
                text = joiner.push(delta.get("content") or "")
                entries = (choice.get("logprobs") or {}).get("content")
                if text or entries:
                    self._arrived()
                    out.put_nowait(UpstreamText(text, entries))
                for call in delta.get("tool_calls") or []:
                    out.put_nowait(UpstreamToolCall(_tool_call_delta(call)))
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        if tail := joiner.flush():
            out.put_nowait(UpstreamText(tail))
        if not done and self.finish_reason is None:
            raise UpstreamError("upstream stream ended without [DONE] or a finish reason")

    async def _read_completion(self, out: asyncio.Queue[UpstreamItem]) -> None:
        """An upstream that ignored `stream`: one JSON completion, moderated like a stream."""
        assert self._response is not None
        try:
            body = json.loads(await self._response.aread())
        except ValueError:
            raise UpstreamError("upstream answer is neither an event stream nor JSON") from None
        if not isinstance(body, dict):
            raise UpstreamError("upstream answer is not a completion object")
        self._take_meta(body)
        choices = body.get("choices") or []
        if not choices or not isinstance(choices[0].get("message"), dict):
            raise UpstreamError("upstream completion has no message")
        choice = choices[0]
        message = choice["message"]
        joiner = SurrogateJoiner()
        text = joiner.push(message.get("content") or "") + joiner.flush()
        entries = (choice.get("logprobs") or {}).get("content")
        if text or entries:
            out.put_nowait(UpstreamText(text, entries))
        for index, call in enumerate(message.get("tool_calls") or []):
            out.put_nowait(UpstreamToolCall(_tool_call_delta({"index": index, **call})))
        self.finish_reason = choice.get("finish_reason") or "stop"

    # -- moderating ----------------------------------------------------------------------------
    def _info(self, prompt: Verdict | None, *, intercept: InterceptEvent | None = None,
              tool_calls: list[Verdict] | None = None) -> GuardrailInfo:
        assert self.session is not None
        checks = self.session.checks + len(tool_calls or [])
        return GuardrailInfo.of(mode="proxy", prompt=prompt, checks=checks, intercept=intercept,
                                response=self.fired, tool_calls=tool_calls)

    def _intercept(self, index: int, score: float, stage: str,
                   tool_calls: list[Verdict] | None = None,
                   flagged: Sequence[str] = ()) -> list[ChatEvent]:
        assert self.session is not None
        self.state.metrics.intercepts.inc(source="proxy")
        event = InterceptEvent(index=index, score=score, action=self.config.action,
                               stage=stage, flagged_categories=list(flagged))  # type: ignore[arg-type]
        info = self._info(self.session.prompt_verdict, intercept=event, tool_calls=tool_calls)
        refusal = [ChatDelta(REFUSAL)] if self.config.action == "refuse" else []
        return [*refusal, ChatEnd("content_filter", info, self.usage)]

    async def _check_tool_call(self, call: dict[str, Any]) -> Verdict:
        """The guard's response check over one call's name and arguments."""
        function = call.get("function") or {}
        text = f"{function.get('name', '')}({function.get('arguments', '')})"
        return await check_one(self.state, self.messages, text, self.config)

    def _arrived(self) -> None:
        """Time the first deltas; once those of the first release are in, record the pace."""
        wanted = self._first_feed_deltas()
        if len(self._arrivals) < wanted:
            self._arrivals.append(asyncio.get_running_loop().time())
            if len(self._arrivals) == wanted:
                first, last = self._arrivals[0], self._arrivals[-1]
                self._pace.observe(first - self._begun, (last - first) / max(1, wanted - 1))

    def _first_feed_deltas(self) -> int:
        """Deltas (about a word each) that reach the first check past the hold-back."""
        period = self.config.period if self.config.strategy == "periodic" else 1
        return self.config.hold_back + period + 1

    async def _check_prompt(self) -> PromptChecked:
        """The prompt check, with the first words folded into its pass when they come in time."""
        assert self.session is not None
        items = await self._first_items()
        text = "".join(item.text for item in items if isinstance(item, UpstreamText))
        verdict, chunk = await run_batched(self.session.batcher, self.session.text,
                                           self.session.state.start_with(self.messages, text))
        return PromptChecked(verdict, items, chunk)

    async def _first_items(self) -> list[UpstreamItem]:
        """The upstream items that arrive while waiting for them pays: up to the deltas of the
        first release, while they are due sooner than folding them saves (`FOLD_SAVES` of a
        pass of their own), and never past `FOLD_WAIT_CAP_S`, so a slow upstream barely
        delays the verdict. The upstream's pace so far, and in its recent streams, says when."""
        assert self.session is not None
        wanted = self._first_feed_deltas()
        loop = asyncio.get_running_loop()
        self._begun = loop.time()
        worth = min(FOLD_WAIT_CAP_S, FOLD_SAVES * self.session.batcher.small_pass_s)
        due = self._pace.due_s(wanted)
        if due is not None and due > worth:
            return []  # this upstream's first words come too late to wait for
        deadline = self._begun + worth
        items: list[UpstreamItem] = []
        texts = 0
        while texts < wanted:
            now = loop.time()
            if texts >= 2:  # the pace so far says when the rest arrive
                first = self._arrivals[0]
                rest = (now - first) / (texts - 1) * (wanted - texts)
                if rest > worth or now + rest > self._begun + FOLD_WAIT_CAP_S:
                    break
                deadline = self._begun + FOLD_WAIT_CAP_S
            try:
                item = await asyncio.wait_for(self._items.get(), deadline - now)
            except TimeoutError:
                break
            items.append(item)
            if isinstance(item, UpstreamText):
                texts += 1
            elif not isinstance(item, UpstreamToolCall):
                break  # the end, or a failure
        return items

    async def events(self) -> AsyncIterator[ChatEvent]:
        """Moderated events; the upstream is closed when they end, however they end."""
        error: str | None = None
        try:
            async for event in self._events():
                if isinstance(event, ChatEnd) and event.error is not None:
                    error = str(event.error.get("code"))
                yield event
        finally:
            await self.aclose(error)

    async def _events(self) -> AsyncIterator[ChatEvent]:
        assert self.session is not None and self._start is not None
        session = self.session
        checked = await self._start
        prompt = checked.verdict
        if self.config.check_prompt and prompt.label == "unsafe":
            for event in self._intercept(0, prompt.score, "prompt", flagged=prompt.flagged_categories):
                yield event
            return
        ledger = LogprobLedger()
        tool_deltas: list[dict[str, Any]] = []
        ended = False
        folded = checked.chunk  # the verdict of the first items' text, checked with the prompt
        first: int | None = None if folded is not None and folded.released else self._first_feed_deltas()
        taken: list[UpstreamItem] | None = checked.items or None
        while not ended:
            if taken is not None:
                items, taken = taken, None
            else:
                items = [await self._items.get()]
                # what arrived during the last check goes in one feed (the session checks every
                # scheduled position inside it); the first feed after the prompt check takes only
                # what covers the hold-back, so the first text leaves after one small pass
                while not self._items.empty() and (first is None or len(items) < first):
                    items.append(self._items.get_nowait())
                first = None
            texts: list[str] = []
            failure: Exception | None = None
            for item in items:
                if isinstance(item, UpstreamText):
                    texts.append(item.text)
                    ledger.add(item.text, item.logprobs)
                elif isinstance(item, UpstreamToolCall):
                    tool_deltas.append(item.delta)
                elif isinstance(item, Exception):
                    failure = item
                else:
                    ended = True
            text = "".join(texts)
            if text:
                verdict = folded if folded is not None else await session.feed(text)
                folded = None
                self.fired.add(verdict.flagged_categories, verdict.blocked_categories)
                if verdict.released or ledger.pending:
                    released = ChatDelta(verdict.released, ledger.release(verdict.released))
                    if released.text or released.logprobs:
                        yield released
                if verdict.intercepted:
                    for event in self._intercept(verdict.intercept_index or 0, verdict.score, "response",
                                                 flagged=verdict.flagged_categories):
                        yield event
                    return
            if failure is not None:
                self.state.metrics.upstream_errors.inc()
                log.warning("upstream stream failed: %s", type(failure).__name__)
                yield ChatEnd("error", self._info(prompt), error={
                    "message": f"upstream stream failed: {failure}", "type": "upstream_error",
                    "code": "upstream_stream"})
                return
        verdict = await session.close()
        self.fired.add(verdict.flagged_categories, verdict.blocked_categories)
        if verdict.released or ledger.pending:
            everything = not verdict.intercepted
            yield ChatDelta(verdict.released, ledger.release(verdict.released, everything=everything))
        if verdict.intercepted:
            for event in self._intercept(verdict.intercept_index or 0, verdict.score, "response",
                                         flagged=verdict.flagged_categories):
                yield event
            return
        verdicts: list[Verdict] | None = None
        if tool_deltas:
            calls = merge_tool_calls(tool_deltas)
            verdicts = list(await asyncio.gather(*(self._check_tool_call(call) for call in calls)))
            flagged = next((v for v in verdicts if v.label == "unsafe"), None)
            if flagged is not None:  # the calls never leave: a tool would act on them
                for event in self._intercept(len(session.response), flagged.score, "response", verdicts,
                                             flagged=flagged.flagged_categories):
                    yield event
                return
            for delta in tool_deltas:
                yield ChatToolCall(delta)
        yield ChatEnd(self.finish_reason or "stop", self._info(prompt, tool_calls=verdicts), self.usage)


async def proxy_models(state: ServerState, authorization: str | None,
                       trace_headers: Mapping[str, str] | None = None, model_id: str | None = None,
                       ) -> dict[str, Any]:
    """The upstream's `/models` list (or one model of it), as it answered."""
    assert state.upstream is not None and state.settings.upstream is not None
    headers: dict[str, str] = {}
    key = state.settings.upstream_api_key
    if key:
        headers["authorization"] = f"Bearer {key}"
    elif authorization and not state.settings.api_key:
        headers["authorization"] = authorization
    span = UpstreamSpan("", trace_headers or {}, operation="models")
    span.inject(headers)
    error: str | None = None
    try:
        path = "/models" if model_id is None else "/models/" + quote(model_id, safe="")
        response = await state.upstream.get(state.settings.upstream.rstrip("/") + path, headers=headers)
        if response.status_code == 404 and model_id is not None:
            raise APIError(404, f"model '{model_id}' is not served upstream", code="model_not_found",
                           param="model")
        if response.status_code != 200:
            error = f"status {response.status_code}"
            raise APIError(502, f"upstream answered {response.status_code}: {response.text[:500]}",
                           type="upstream_error", code="upstream_status")
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return body
    except httpx.HTTPError as exc:
        error = type(exc).__name__
        raise APIError(502, f"upstream unreachable: {type(exc).__name__}", type="upstream_error",
                       code="upstream_unreachable") from exc
    except ValueError as exc:
        error = "malformed"
        raise APIError(502, "upstream models list is not a JSON object", type="upstream_error",
                       code="upstream_malformed") from exc
    finally:
        span.end(error)
