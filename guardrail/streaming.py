"""Moderate any stream of text chunks with a guard's moderation session.

`moderate(stream, prompt=...)` wraps a sync or async iterator of text chunks (another model's
output) and yields only text that a safe check has covered: chunks go through the session's
hold-back buffer, so the consumer sees text a few tokens late and never sees a flagged span.
On interception the stream either raises `GuardrailViolation` or yields a replacement and
stops, and the upstream iterator is closed so the upstream model stops generating.

Everything here calls the `Guard` method surface only (`check_prompt`, `check_response`,
`session`), so the embedded guard and the sidecar client are interchangeable.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Any, Literal, Protocol, overload, runtime_checkable

from guardrail.errors import GuardrailViolation
from guardrail.types import ChatMessage, ChunkVerdict, GuardConfig, Verdict

OnViolation = Literal["raise", "replace"]
PromptLike = str | Sequence[ChatMessage | dict[str, Any]]
VerdictHook = Callable[[str, Verdict | ChunkVerdict], None]
"""Called with a stage ("input", "output", "stream") and each verdict, e.g. to log or count."""

DEFAULT_REPLACEMENT = "I can't help with that."
"""What `on_violation="replace"` shows instead of the rest of a flagged answer."""

NO_PROMPT: list[dict[str, Any]] = [{"role": "user", "content": ""}]
"""Stands in for a request when only a response is known (an empty user turn)."""


@runtime_checkable
class SessionLike(Protocol):
    """What a moderation session offers (embedded `ModerationSession` or the sidecar's)."""

    def feed(self, chunk: str | bytes) -> ChunkVerdict: ...

    def close(self) -> ChunkVerdict: ...


@runtime_checkable
class GuardLike(Protocol):
    """The `Guard` method surface this module relies on."""

    def check_prompt(self, prompt: Any) -> Verdict: ...

    def check_response(self, prompt: Any, response: str) -> Verdict: ...

    def session(self, prompt: Any, *, config: GuardConfig | None = None) -> Any: ...


# -- the default guard --------------------------------------------------------------------------
_default_guard: Any = None
_default_lock = threading.Lock()


def default_guard() -> Any:
    """The process-wide embedded `Guard`, created on first use (loading the model once)."""
    global _default_guard
    if _default_guard is None:
        with _default_lock:
            if _default_guard is None:
                from guardrail.guard import Guard

                _default_guard = Guard()
    return _default_guard


def set_default_guard(guard: Any) -> None:
    """Use this guard (for example a sidecar client or an instrumented guard) wherever none is given."""
    global _default_guard
    with _default_lock:
        _default_guard = guard


def resolve_guard(guard: Any | None) -> Any:
    return guard if guard is not None else default_guard()


# -- prompts ------------------------------------------------------------------------------------
_ROLE_ALIASES = {"human": "user", "ai": "assistant", "developer": "system", "tool": "user",
                 "function": "user"}


def _content_text(content: Any) -> str:
    """Plain text of a message content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p if isinstance(p, str) else _get(p, "text") for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else str(content)


def as_prompt(value: Any) -> PromptLike | None:
    """A request the guard can read, from a string or chat messages; None if `value` is neither.

    Messages may be `ChatMessage`s, OpenAI-style dicts (tool and developer roles are mapped
    onto user and system) or objects with `role`/`content` attributes.
    """
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, ChatMessage):
        return [value]
    if isinstance(value, Sequence) and value and not isinstance(value, bytes):
        messages: list[dict[str, Any]] = []
        for item in value:
            role, content = _get(item, "role"), _get(item, "content")
            if not isinstance(role, str) or (content is None and role != "assistant"):
                return None
            role = _ROLE_ALIASES.get(role, role)
            if role not in ("system", "user", "assistant"):
                return None
            messages.append({"role": role, "content": _content_text(content)})
        return messages
    return None


# -- verdict helpers ----------------------------------------------------------------------------
def judge(verdict: Verdict, config: GuardConfig | None) -> Verdict:
    """Re-label a check against `config.threshold` when the caller set its own threshold.

    `check_prompt` and `check_response` judge with the guard's own threshold; the score is
    the same either way, so a per-call threshold only changes the label.
    """
    if config is None or config.threshold == verdict.threshold:
        return verdict
    label = "unsafe" if verdict.score >= config.threshold else "safe"
    return verdict.model_copy(update={"label": label, "threshold": config.threshold})


async def acall(obj: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    """Await `obj.<name>` (or `obj.a<name>`) where it is async; else run it in a worker thread.

    The embedded guard is CPU-bound, so a worker thread keeps the event loop free; the async
    sidecar client's methods are coroutines and are awaited directly.
    """
    method = getattr(obj, "a" + name, None)
    if method is None or not inspect.iscoroutinefunction(method):
        method = getattr(obj, name)
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    result = await asyncio.to_thread(method, *args, **kwargs)
    return await result if inspect.isawaitable(result) else result


# -- the moderator --------------------------------------------------------------------------------
class StreamModerator:
    """One moderation session driven chunk by chunk.

    Coalesces upstream deltas into chunks of at least `chunk_chars` characters (each feed is
    one check, so this bounds the checking cost for token-sized deltas), feeds the session,
    and accumulates the released text. Not thread-safe; one stream per moderator.
    """

    def __init__(
        self,
        guard: Any | None,
        prompt: PromptLike,
        *,
        config: GuardConfig | None = None,
        chunk_chars: int = 0,
        session: Any | None = None,
        on_verdict: VerdictHook | None = None,
    ) -> None:
        if chunk_chars < 0:
            raise ValueError("chunk_chars must be >= 0")
        self.guard = resolve_guard(guard)
        self.prompt = prompt
        self.config = config
        self.chunk_chars = chunk_chars
        self.session = session if session is not None else self.guard.session(prompt, config=config)
        self.pending = ""
        self.released = ""
        self.verdict: ChunkVerdict | None = None
        self.finished = False
        self.on_verdict = on_verdict
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    @classmethod
    async def acreate(
        cls, guard: Any | None, prompt: PromptLike, *, config: GuardConfig | None = None,
        chunk_chars: int = 0, on_verdict: VerdictHook | None = None,
    ) -> StreamModerator:
        """Open the session off the event loop (it encodes the prompt)."""
        resolved = resolve_guard(guard) if guard is not None else await asyncio.to_thread(default_guard)
        session = await acall(resolved, "session", prompt, config=config)
        return cls(resolved, prompt, config=config, chunk_chars=chunk_chars, session=session,
                   on_verdict=on_verdict)

    @property
    def intercepted(self) -> bool:
        return self.verdict is not None and self.verdict.intercepted

    @property
    def prompt_verdict(self) -> Verdict | None:
        """The session's own check of the request, when the session ran one."""
        verdict = getattr(self.session, "prompt_verdict", None)
        return judge(verdict, self.config) if isinstance(verdict, Verdict) else None

    def _take(self, piece: str | bytes) -> str | None:
        """Add a delta; return the chunk to feed now, or None to keep accumulating."""
        if self.finished:
            raise RuntimeError("the stream is already finished")
        self.pending += self._decoder.decode(piece) if isinstance(piece, bytes) else piece
        if not self.pending or len(self.pending) < self.chunk_chars:
            return None
        chunk, self.pending = self.pending, ""
        return chunk

    def _apply(self, verdict: ChunkVerdict) -> str:
        self.verdict = verdict
        self.released += verdict.released
        if self.on_verdict is not None:
            self.on_verdict("stream", verdict)
        if verdict.intercepted:
            self.finished = True
        return verdict.released

    def feed(self, piece: str | bytes) -> str:
        """Add one upstream delta; return the text newly cleared for display."""
        chunk = self._take(piece)
        return self._apply(self.session.feed(chunk)) if chunk is not None else ""

    def close(self) -> str:
        """End of the upstream stream: check the tail and return what is cleared."""
        if self.finished:
            return ""
        out = self._flush_pending()
        if self.intercepted:
            return out
        self.finished = True
        return out + self._apply(self.session.close())

    def _flush_pending(self) -> str:
        self.pending += self._decoder.decode(b"", final=True)
        chunk, self.pending = self.pending, ""
        return self._apply(self.session.feed(chunk)) if chunk else ""

    async def afeed(self, piece: str | bytes) -> str:
        chunk = self._take(piece)
        if chunk is None:
            return ""
        return self._apply(await acall(self.session, "feed", chunk))

    async def aclose(self) -> str:
        if self.finished:
            return ""
        self.pending += self._decoder.decode(b"", final=True)
        chunk, self.pending = self.pending, ""
        out = self._apply(await acall(self.session, "feed", chunk)) if chunk else ""
        if self.intercepted:
            return out
        self.finished = True
        return out + self._apply(await acall(self.session, "close"))

    def abort(self) -> None:
        """The stream ended early (upstream error, consumer gone): free the session's state.

        The embedded session holds nothing worth freeing; a sidecar session is deleted.
        """
        if self.finished:
            return
        self.finished = True
        delete = getattr(self.session, "delete", None)
        if callable(delete) and not inspect.iscoroutinefunction(delete):
            with contextlib.suppress(Exception):
                delete()

    async def aabort(self) -> None:
        if self.finished:
            return
        self.finished = True
        delete = getattr(self.session, "delete", None)
        if callable(delete):
            with contextlib.suppress(Exception):
                await acall(self.session, "delete")

    def violation(self) -> GuardrailViolation:
        assert self.verdict is not None
        return GuardrailViolation(self.verdict, stage="stream", released=self.released)


# -- moderate() -----------------------------------------------------------------------------------
def _close_iter(it: Any) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        close()


async def _aclose_iter(it: Any) -> None:
    aclose = getattr(it, "aclose", None)
    if callable(aclose):
        await aclose()


def _as_text(piece: Any) -> str | bytes:
    if isinstance(piece, str | bytes):
        return piece
    if piece is None:
        return ""
    raise TypeError(f"moderate() expects text chunks, got {type(piece).__name__}; "
                    "use openai_text()/anthropic_text() for SDK delta streams")


def _input_violation(mod: StreamModerator, verdict: Verdict | None) -> Verdict | None:
    """The request's verdict when it is flagged, else None."""
    if verdict is None:
        verdict = judge(mod.guard.check_prompt(mod.prompt), mod.config)
    if mod.on_verdict is not None:
        mod.on_verdict("input", verdict)
    return verdict if verdict.unsafe else None


def _moderate_sync(
    stream: Iterable[str | bytes], guard: Any | None, prompt: PromptLike, config: GuardConfig | None,
    chunk_chars: int, on_violation: OnViolation, replacement: str, check_input: bool,
    on_verdict: VerdictHook | None,
) -> Iterator[str]:
    it = iter(stream)
    mod: StreamModerator | None = None
    try:
        mod = StreamModerator(guard, prompt, config=config, chunk_chars=chunk_chars, on_verdict=on_verdict)
        if check_input and (flagged := _input_violation(mod, mod.prompt_verdict)) is not None:
            if on_violation == "raise":
                raise GuardrailViolation(flagged, stage="input")
            yield replacement
            return
        for piece in it:
            out = mod.feed(_as_text(piece))
            if out:
                yield out
            if mod.intercepted:
                break
        else:
            out = mod.close()
            if out:
                yield out
        if mod.intercepted:
            if on_violation == "raise":
                raise mod.violation()
            yield replacement
    finally:
        _close_iter(it)
        if mod is not None:
            mod.abort()


async def _moderate_async(
    stream: AsyncIterable[str | bytes], guard: Any | None, prompt: PromptLike, config: GuardConfig | None,
    chunk_chars: int, on_violation: OnViolation, replacement: str, check_input: bool,
    on_verdict: VerdictHook | None,
) -> AsyncIterator[str]:
    it = aiter(stream)
    mod: StreamModerator | None = None
    try:
        mod = await StreamModerator.acreate(guard, prompt, config=config, chunk_chars=chunk_chars,
                                            on_verdict=on_verdict)
        if check_input:
            verdict = mod.prompt_verdict or judge(await acall(mod.guard, "check_prompt", prompt), config)
            if on_verdict is not None:
                on_verdict("input", verdict)
            if verdict.unsafe:
                if on_violation == "raise":
                    raise GuardrailViolation(verdict, stage="input")
                yield replacement
                return
        async for piece in it:
            out = await mod.afeed(_as_text(piece))
            if out:
                yield out
            if mod.intercepted:
                break
        else:
            out = await mod.aclose()
            if out:
                yield out
        if mod.intercepted:
            if on_violation == "raise":
                raise mod.violation()
            yield replacement
    finally:
        await _aclose_iter(it)
        if mod is not None:
            await mod.aabort()


@overload
def moderate(
    stream: AsyncIterable[str] | AsyncIterable[str | bytes], *, prompt: PromptLike, guard: Any | None = ...,
    config: GuardConfig | None = ..., on_violation: OnViolation = ..., replacement: str = ...,
    chunk_chars: int = ..., check_input: bool = ..., on_verdict: VerdictHook | None = ...,
) -> AsyncIterator[str]: ...


@overload
def moderate(
    stream: Iterable[str] | Iterable[str | bytes], *, prompt: PromptLike, guard: Any | None = ...,
    config: GuardConfig | None = ..., on_violation: OnViolation = ..., replacement: str = ...,
    chunk_chars: int = ..., check_input: bool = ..., on_verdict: VerdictHook | None = ...,
) -> Iterator[str]: ...


def moderate(
    stream: Iterable[Any] | AsyncIterable[Any],
    *,
    prompt: PromptLike,
    guard: Any | None = None,
    config: GuardConfig | None = None,
    on_violation: OnViolation = "raise",
    replacement: str = DEFAULT_REPLACEMENT,
    chunk_chars: int = 0,
    check_input: bool = False,
    on_verdict: VerdictHook | None = None,
) -> Iterator[str] | AsyncIterator[str]:
    """Yield only the checked text of `stream`, cutting it where the guard intercepts.

    `stream` is a sync or async iterable of text chunks; the result is of the same kind.
    `prompt` is the request that produced the stream (a string or chat messages): the
    [CLS] check reads the request together with the answer so far. `config` overrides the
    guard's threshold, tau and hold-back for this stream; `chunk_chars` coalesces small deltas
    so that one check covers at least that many characters. With `check_input`, a flagged
    request is refused before the upstream stream is read at all. `on_verdict` sees every
    verdict as it comes.
    """
    if on_violation not in ("raise", "replace"):
        raise ValueError("on_violation must be 'raise' or 'replace'")
    if isinstance(stream, AsyncIterable):
        return _moderate_async(stream, guard, prompt, config, chunk_chars, on_violation, replacement,
                               check_input, on_verdict)
    return _moderate_sync(stream, guard, prompt, config, chunk_chars, on_violation, replacement,
                          check_input, on_verdict)


# -- adapters for SDK delta streams ---------------------------------------------------------------
def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def openai_delta_text(chunk: Any) -> str:
    """Text of one OpenAI-style chat completion chunk (`choices[0].delta.content`), or ""."""
    choices = _get(chunk, "choices") or []
    if not choices:
        return ""
    content = _get(_get(choices[0], "delta") or {}, "content")
    return content if isinstance(content, str) else ""


def anthropic_delta_text(event: Any) -> str:
    """Text of one Anthropic-style stream event (`content_block_delta` / `text_delta`), or ""."""
    if _get(event, "type") != "content_block_delta":
        return ""
    delta = _get(event, "delta") or {}
    if _get(delta, "type") not in (None, "text_delta"):
        return ""
    text = _get(delta, "text")
    return text if isinstance(text, str) else ""


def _adapt(stream: Any, extract: Callable[[Any], str]) -> Iterator[str] | AsyncIterator[str]:
    if isinstance(stream, AsyncIterable):
        async def agen() -> AsyncIterator[str]:
            it = aiter(stream)
            try:
                async for item in it:
                    if text := extract(item):
                        yield text
            finally:
                await _aclose_iter(it)

        return agen()

    def gen() -> Iterator[str]:
        it = iter(stream)
        try:
            for item in it:
                if text := extract(item):
                    yield text
        finally:
            _close_iter(it)

    return gen()


def openai_text(stream: Any) -> Any:
    """Text deltas of an OpenAI-style chat completion stream (sync or async, objects or dicts)."""
    return _adapt(stream, openai_delta_text)


def anthropic_text(stream: Any) -> Any:
    """Text deltas of an Anthropic-style message event stream (sync or async, objects or dicts)."""
    return _adapt(stream, anthropic_delta_text)


def moderate_openai(stream: Any, *, prompt: PromptLike, **options: Any) -> Any:
    """`moderate()` over an OpenAI-style delta stream: yields checked text."""
    return moderate(openai_text(stream), prompt=prompt, **options)


def moderate_anthropic(stream: Any, *, prompt: PromptLike, **options: Any) -> Any:
    """`moderate()` over an Anthropic-style event stream: yields checked text."""
    return moderate(anthropic_text(stream), prompt=prompt, **options)


__all__ = [
    "DEFAULT_REPLACEMENT",
    "GuardLike",
    "OnViolation",
    "SessionLike",
    "StreamModerator",
    "VerdictHook",
    "anthropic_delta_text",
    "anthropic_text",
    "as_prompt",
    "default_guard",
    "moderate",
    "moderate_anthropic",
    "moderate_openai",
    "openai_delta_text",
    "openai_text",
    "set_default_guard",
]
