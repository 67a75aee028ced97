"""`moderate(stream, prompt=...)`: yield only the checked text of a sync or async stream.

Chunks go through the session's hold-back buffer, so the consumer sees text a few tokens late
and never sees a flagged span. On interception the stream either raises `GuardrailViolation`
or yields a replacement and stops, and the upstream iterator is closed so the upstream model
stops generating. The sync and async loops share every decision (`_input_outcome`, `_ending`,
`_as_text`); they differ only in the awaits.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from typing import Any, Literal, overload

from guardrail.stream.adapters import aclose_iter, anthropic_text, close_iter, openai_text
from guardrail.stream.bridge import AnyGuard, as_async, require_sync
from guardrail.stream.moderator import (
    Replacement,
    StreamModerator,
    VerdictHook,
    judge,
    replacement_text,
    violation,
)
from guardrail.types import GuardConfig, PromptInput, Verdict

OnViolation = Literal["raise", "replace"]

DEFAULT_REPLACEMENT = "I can't help with that."
"""What `on_violation="replace"` shows instead of the rest of a flagged answer."""


def _as_text(piece: object) -> str | bytes:
    if isinstance(piece, str | bytes):
        return piece
    if piece is None:
        return ""
    raise TypeError(f"moderate() expects text chunks, got {type(piece).__name__}; "
                    "use openai_text()/anthropic_text() for SDK delta streams")


def _input_outcome(mod: StreamModerator, verdict: Verdict, on_violation: OnViolation,
                   replacement: Replacement) -> str | None:
    """Judge the request's verdict: None to go on, the replacement to show, or raise."""
    verdict = judge(verdict, mod.config)
    if mod.on_verdict is not None:
        mod.on_verdict("input", verdict)
    if not verdict.unsafe:
        return None
    if on_violation == "raise":
        raise violation(verdict, "input")
    return replacement_text(replacement, verdict)


def _ending(mod: StreamModerator, on_violation: OnViolation, replacement: Replacement) -> str | None:
    """After the loop: the replacement to show for a cut stream, None for a whole one, or raise."""
    if not mod.intercepted:
        return None
    if on_violation == "raise":
        raise mod.violation()
    return replacement_text(replacement, mod.verdict)


def _moderate_sync(
    stream: Iterable[Any], guard: AnyGuard | None, prompt: PromptInput, config: GuardConfig | None,
    chunk_chars: int, on_violation: OnViolation, replacement: Replacement, check_input: bool,
    on_verdict: VerdictHook | None,
) -> Iterator[str]:
    it = iter(stream)
    mod: StreamModerator | None = None
    try:
        mod = StreamModerator(guard, prompt, config=config, chunk_chars=chunk_chars, on_verdict=on_verdict)
        if check_input:
            verdict = mod.session.prompt_verdict or require_sync(mod.guard).check_prompt(prompt)
            if (shown := _input_outcome(mod, verdict, on_violation, replacement)) is not None:
                yield shown
                return
        for piece in it:
            if out := mod.feed(_as_text(piece)):
                yield out
            if mod.intercepted:
                break
        else:
            if out := mod.close():
                yield out
        if (shown := _ending(mod, on_violation, replacement)) is not None:
            yield shown
    finally:
        close_iter(it)
        if mod is not None:
            mod.abort()


async def _moderate_async(
    stream: AsyncIterable[Any], guard: AnyGuard | None, prompt: PromptInput, config: GuardConfig | None,
    chunk_chars: int, on_violation: OnViolation, replacement: Replacement, check_input: bool,
    on_verdict: VerdictHook | None,
) -> AsyncIterator[str]:
    it = aiter(stream)
    mod: StreamModerator | None = None
    try:
        mod = await StreamModerator.acreate(guard, prompt, config=config, chunk_chars=chunk_chars,
                                            on_verdict=on_verdict)
        if check_input:
            verdict = mod.session.prompt_verdict or await as_async(mod.guard).check_prompt(prompt)
            if (shown := _input_outcome(mod, verdict, on_violation, replacement)) is not None:
                yield shown
                return
        async for piece in it:
            if out := await mod.afeed(_as_text(piece)):
                yield out
            if mod.intercepted:
                break
        else:
            if out := await mod.aclose():
                yield out
        if (shown := _ending(mod, on_violation, replacement)) is not None:
            yield shown
    finally:
        await aclose_iter(it)
        if mod is not None:
            await mod.aabort()


@overload
def moderate(
    stream: AsyncIterable[str] | AsyncIterable[str | bytes], *, prompt: PromptInput,
    guard: AnyGuard | None = ..., config: GuardConfig | None = ..., on_violation: OnViolation = ...,
    replacement: Replacement = ..., chunk_chars: int = ..., check_input: bool = ...,
    on_verdict: VerdictHook | None = ...,
) -> AsyncIterator[str]: ...


@overload
def moderate(
    stream: Iterable[str] | Iterable[str | bytes], *, prompt: PromptInput, guard: AnyGuard | None = ...,
    config: GuardConfig | None = ..., on_violation: OnViolation = ..., replacement: Replacement = ...,
    chunk_chars: int = ..., check_input: bool = ..., on_verdict: VerdictHook | None = ...,
) -> Iterator[str]: ...


def moderate(
    stream: Iterable[Any] | AsyncIterable[Any],
    *,
    prompt: PromptInput,
    guard: AnyGuard | None = None,
    config: GuardConfig | None = None,
    on_violation: OnViolation = "raise",
    replacement: Replacement = DEFAULT_REPLACEMENT,
    chunk_chars: int = 0,
    check_input: bool = False,
    on_verdict: VerdictHook | None = None,
) -> Iterator[str] | AsyncIterator[str]:
    """Yield only the checked text of `stream`, cutting it where the guard intercepts.

    `stream` is a sync or async iterable of text chunks; the result is of the same kind.
    `prompt` is the request that produced the stream (a string or chat messages): the
    [CLS] check reads the request together with the answer so far. `guard` is any guard,
    sync or async (an async one needs an async stream). `config` overrides the guard's
    threshold, tau and hold-back for this stream (only the fields it sets); `chunk_chars`
    coalesces small deltas so that one check covers at least that many characters.
    `replacement` may be a function of the flagged verdict (its `flagged_categories` name what
    fired), e.g. to route self-harm to a help message. With
    `check_input`, a flagged request is refused before the upstream stream is read at all.
    `on_verdict` sees every verdict as it comes.
    """
    if on_violation not in ("raise", "replace"):
        raise ValueError("on_violation must be 'raise' or 'replace'")
    if isinstance(stream, AsyncIterable):
        return _moderate_async(stream, guard, prompt, config, chunk_chars, on_violation, replacement,
                               check_input, on_verdict)
    return _moderate_sync(stream, guard, prompt, config, chunk_chars, on_violation, replacement,
                          check_input, on_verdict)


def moderate_openai(stream: Iterable[Any] | AsyncIterable[Any], *, prompt: PromptInput,
                    **options: Any) -> Iterator[str] | AsyncIterator[str]:
    """`moderate()` over an OpenAI-style delta stream: yields checked text."""
    return moderate(openai_text(stream), prompt=prompt, **options)  # type: ignore[call-overload]


def moderate_anthropic(stream: Iterable[Any] | AsyncIterable[Any], *, prompt: PromptInput,
                       **options: Any) -> Iterator[str] | AsyncIterator[str]:
    """`moderate()` over an Anthropic-style event stream: yields checked text."""
    return moderate(anthropic_text(stream), prompt=prompt, **options)  # type: ignore[call-overload]


__all__ = ["DEFAULT_REPLACEMENT", "OnViolation", "moderate", "moderate_anthropic", "moderate_openai"]
