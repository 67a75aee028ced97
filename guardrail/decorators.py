"""`@guarded`: put the guard around an application function without touching its body.

Works on plain, async, generator and async-generator functions. The request is checked before
the function runs (a flagged request never reaches the model behind it); a returned answer is
checked before it is returned; a streamed answer is moderated as it flows, so the caller only
ever sees text a safe check has covered.

    @guarded
    def answer(question: str) -> str: ...

    @guarded(on_violation="replace", replacement="Sorry, I can't help with that.")
    async def chat(messages: list[dict]) -> AsyncIterator[str]: ...
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar, overload

from guardrail.errors import GuardrailViolation, Stage
from guardrail.protocols import AsyncGuardProtocol, GuardProtocol
from guardrail.stream.bridge import AnyGuard, as_async, require_sync
from guardrail.stream.default import aresolve_guard, resolve_guard, set_default_guard
from guardrail.stream.moderate import DEFAULT_REPLACEMENT, OnViolation, moderate
from guardrail.stream.moderator import Replacement, VerdictHook, judge, replacement_text, violation
from guardrail.stream.prompts import NO_PROMPT, as_prompt
from guardrail.types import GuardConfig, PromptInput, Verdict

F = TypeVar("F", bound=Callable[..., Any])


def _default_output_text(value: Any) -> str | None:
    """Text of a returned answer: a string, a message dict or an object with `.content`."""
    if isinstance(value, str):
        return value
    content = value.get("content") if isinstance(value, dict) else getattr(value, "content", None)
    return content if isinstance(content, str) else None


class _Spec:
    """Everything a guarded call needs, resolved once at decoration time, and the steps every
    variant (plain, async, generator, async generator) shares."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        guard: AnyGuard | None,
        config: GuardConfig | None,
        check_input: bool,
        check_output: bool,
        prompt_arg: str | int | None,
        prompt_from: Callable[..., Any] | None,
        output_text: Callable[[Any], str | None] | None,
        on_violation: OnViolation,
        replacement: Replacement,
        chunk_chars: int,
        on_verdict: VerdictHook | None,
    ) -> None:
        if on_violation not in ("raise", "replace"):
            raise ValueError("on_violation must be 'raise' or 'replace'")
        self.fn = fn
        self.signature = inspect.signature(fn)
        self.guard = guard
        self.config = config
        self.check_input = check_input
        self.check_output = check_output
        self.prompt_arg = prompt_arg
        self.prompt_from = prompt_from
        self.output_text = output_text or _default_output_text
        self.on_violation = on_violation
        self.replacement = replacement
        self.chunk_chars = chunk_chars
        self.on_verdict = on_verdict

    def prompt(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PromptInput | None:
        """The request in this call: from `prompt_from`, the named argument, or the first prompt-like one."""
        if self.prompt_from is not None:
            return as_prompt(self.prompt_from(*args, **kwargs))
        if isinstance(self.prompt_arg, int):
            return as_prompt(args[self.prompt_arg]) if self.prompt_arg < len(args) else None
        bound = self.signature.bind_partial(*args, **kwargs)
        bound.apply_defaults()
        if self.prompt_arg is not None:
            if self.prompt_arg not in bound.arguments:
                raise TypeError(f"{self.fn.__qualname__}() has no argument {self.prompt_arg!r}")
            return as_prompt(bound.arguments[self.prompt_arg])
        for value in bound.arguments.values():
            if (found := as_prompt(value)) is not None:
                return found
        return None

    # -- shared steps ---------------------------------------------------------------------------
    def checks_input(self, prompt: PromptInput | None) -> bool:
        return self.check_input and prompt is not None

    def answer_text(self, result: Any) -> str | None:
        """The text of a returned answer to check, or None when there is nothing to check."""
        return self.output_text(result) if self.check_output else None

    def gate(self, stage: Stage, verdict: Verdict) -> str | None:
        """Judge a verdict: None to go on, the replacement to return or yield, or raise."""
        verdict = judge(verdict, self.config)
        if self.on_verdict is not None:
            self.on_verdict(stage, verdict)
        if not verdict.unsafe:
            return None
        if self.on_violation == "raise":
            raise violation(verdict, stage)
        return replacement_text(self.replacement, verdict)

    def stream(self, upstream: Any, prompt: PromptInput | None) -> Any:
        return moderate(
            upstream, prompt=prompt if prompt is not None else NO_PROMPT, guard=self.guard,
            config=self.config, on_violation=self.on_violation, replacement=self.replacement,
            chunk_chars=self.chunk_chars, check_input=self.checks_input(prompt),
            on_verdict=self.on_verdict,
        )

    def sync_guard(self) -> GuardProtocol:
        return require_sync(resolve_guard(self.guard))

    async def async_guard(self) -> AsyncGuardProtocol:
        return as_async(await aresolve_guard(self.guard))


def _wrap(spec: _Spec) -> Callable[..., Any]:
    fn = spec.fn

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def agen_wrapper(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            prompt = spec.prompt(args, kwargs)
            upstream = fn(*args, **kwargs)
            if not spec.check_output:
                async for item in _input_gate_async(spec, prompt, upstream):
                    yield item
                return
            async for text in spec.stream(upstream, prompt):
                yield text

        return agen_wrapper

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
            prompt = spec.prompt(args, kwargs)
            upstream = fn(*args, **kwargs)
            if not spec.check_output:
                yield from _input_gate_sync(spec, prompt, upstream)
                return
            yield from spec.stream(upstream, prompt)

        return gen_wrapper

    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            guard = await spec.async_guard()
            prompt = spec.prompt(args, kwargs)
            if (prompt is not None and spec.check_input
                    and (shown := spec.gate("input", await guard.check_prompt(prompt))) is not None):
                return shown
            result = await fn(*args, **kwargs)
            if text := spec.answer_text(result):
                verdict = await guard.check_response(prompt if prompt is not None else NO_PROMPT, text)
                if (shown := spec.gate("output", verdict)) is not None:
                    return shown
            return result

        return async_wrapper

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        guard = spec.sync_guard()
        prompt = spec.prompt(args, kwargs)
        if (prompt is not None and spec.check_input
                and (shown := spec.gate("input", guard.check_prompt(prompt))) is not None):
            return shown
        result = fn(*args, **kwargs)
        if text := spec.answer_text(result):
            verdict = guard.check_response(prompt if prompt is not None else NO_PROMPT, text)
            if (shown := spec.gate("output", verdict)) is not None:
                return shown
        return result

    return wrapper


def _input_gate_sync(spec: _Spec, prompt: PromptInput | None, upstream: Iterator[Any]) -> Iterator[Any]:
    """Input check only: a generator whose output is not moderated."""
    try:
        if (prompt is not None and spec.check_input
                and (shown := spec.gate("input", spec.sync_guard().check_prompt(prompt))) is not None):
            yield shown
            return
        yield from upstream
    finally:
        close = getattr(upstream, "close", None)
        if close is not None:
            close()


async def _input_gate_async(
    spec: _Spec, prompt: PromptInput | None, upstream: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    try:
        if prompt is not None and spec.checks_input(prompt):
            guard = await spec.async_guard()
            if (shown := spec.gate("input", await guard.check_prompt(prompt))) is not None:
                yield shown
                return
        async for item in upstream:
            yield item
    finally:
        aclose = getattr(upstream, "aclose", None)
        if aclose is not None:
            await aclose()


@overload
def guarded(fn: F, /) -> F: ...


@overload
def guarded(
    fn: None = None,
    /,
    *,
    guard: AnyGuard | None = ...,
    config: GuardConfig | None = ...,
    check_input: bool = ...,
    check_output: bool = ...,
    prompt_arg: str | int | None = ...,
    prompt_from: Callable[..., Any] | None = ...,
    output_text: Callable[[Any], str | None] | None = ...,
    on_violation: OnViolation = ...,
    replacement: Replacement = ...,
    chunk_chars: int = ...,
    on_verdict: VerdictHook | None = ...,
) -> Callable[[F], F]: ...


def guarded(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    guard: AnyGuard | None = None,
    config: GuardConfig | None = None,
    check_input: bool = True,
    check_output: bool = True,
    prompt_arg: str | int | None = None,
    prompt_from: Callable[..., Any] | None = None,
    output_text: Callable[[Any], str | None] | None = None,
    on_violation: OnViolation = "raise",
    replacement: Replacement = DEFAULT_REPLACEMENT,
    chunk_chars: int = 0,
    on_verdict: VerdictHook | None = None,
) -> Any:
    """Guard a function's request and answer; usable bare (`@guarded`) or with options.

    guard: any guard (`Guard()`, `Guard(backend=URL)`, a sidecar client, an instrumented
        guard; an async guard for async functions); default: one shared embedded guard,
        created on first call.
    config: threshold / tau / hold-back for this function (checks are re-labelled against
        its threshold; streams use it for their moderation session).
    prompt_arg: the argument (name or position) holding the request, a string or chat
        messages; default: the first argument that is one. `prompt_from(*args, **kwargs)`
        computes it instead.
    output_text: how to read the answer's text from a return value; default: a string, a
        message dict's or an object's `content`. Other return values are not checked.
    on_violation: "raise" raises `GuardrailViolation` (its message and `verdict` name the
        categories that fired); "replace" returns (or, for a stream, yields after the
        released text) `replacement` and stops. `replacement` may be a function of the
        flagged verdict, e.g. `lambda v: HELP if "self-harm" in v.flagged_categories else NO`.
    chunk_chars: for streams, feed the session once at least this many characters arrived.
    """
    def decorate(target: F) -> F:
        spec = _Spec(
            target, guard=guard, config=config, check_input=check_input, check_output=check_output,
            prompt_arg=prompt_arg, prompt_from=prompt_from, output_text=output_text,
            on_violation=on_violation, replacement=replacement, chunk_chars=chunk_chars,
            on_verdict=on_verdict,
        )
        return _wrap(spec)  # type: ignore[return-value]

    if fn is not None:
        return decorate(fn)  # type: ignore[type-var]
    return decorate


guard = guarded
"""Alias: `@guard` reads naturally where `Guard` instances are called something else."""

__all__ = ["GuardrailViolation", "guard", "guarded", "set_default_guard"]
