"""Text deltas of OpenAI- and Anthropic-style SDK streams (sync or async, objects or dicts)."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, overload

from guardrail.stream.prompts import get_field


def openai_delta_text(chunk: Any) -> str:
    """Text of one OpenAI-style chat completion chunk (`choices[0].delta.content`), or ""."""
    choices = get_field(chunk, "choices") or []
    if not choices:
        return ""
    content = get_field(get_field(choices[0], "delta") or {}, "content")
    return content if isinstance(content, str) else ""


def anthropic_delta_text(event: Any) -> str:
    """Text of one Anthropic-style stream event (`content_block_delta` / `text_delta`), or ""."""
    if get_field(event, "type") != "content_block_delta":
        return ""
    delta = get_field(event, "delta") or {}
    if get_field(delta, "type") not in (None, "text_delta"):
        return ""
    text = get_field(delta, "text")
    return text if isinstance(text, str) else ""


def close_iter(it: object) -> None:
    close = getattr(it, "close", None)
    if callable(close):
        close()


async def aclose_iter(it: object) -> None:
    aclose = getattr(it, "aclose", None)
    if callable(aclose):
        await aclose()


@overload
def adapt(stream: AsyncIterable[Any], extract: Callable[[Any], str]) -> AsyncIterator[str]: ...


@overload
def adapt(stream: Iterable[Any], extract: Callable[[Any], str]) -> Iterator[str]: ...


def adapt(stream: Iterable[Any] | AsyncIterable[Any],
          extract: Callable[[Any], str]) -> Iterator[str] | AsyncIterator[str]:
    """The non-empty texts `extract` finds in each item, closing the source when done."""
    if isinstance(stream, AsyncIterable):
        source = stream

        async def agen() -> AsyncIterator[str]:
            it = aiter(source)
            try:
                async for item in it:
                    if text := extract(item):
                        yield text
            finally:
                await aclose_iter(it)

        return agen()

    def gen() -> Iterator[str]:
        it = iter(stream)
        try:
            for item in it:
                if text := extract(item):
                    yield text
        finally:
            close_iter(it)

    return gen()


@overload
def openai_text(stream: AsyncIterable[Any]) -> AsyncIterator[str]: ...


@overload
def openai_text(stream: Iterable[Any]) -> Iterator[str]: ...


def openai_text(stream: Iterable[Any] | AsyncIterable[Any]) -> Iterator[str] | AsyncIterator[str]:
    """Text deltas of an OpenAI-style chat completion stream (sync or async, objects or dicts)."""
    return adapt(stream, openai_delta_text)


@overload
def anthropic_text(stream: AsyncIterable[Any]) -> AsyncIterator[str]: ...


@overload
def anthropic_text(stream: Iterable[Any]) -> Iterator[str]: ...


def anthropic_text(stream: Iterable[Any] | AsyncIterable[Any]) -> Iterator[str] | AsyncIterator[str]:
    """Text deltas of an Anthropic-style message event stream (sync or async, objects or dicts)."""
    return adapt(stream, anthropic_delta_text)


__all__ = ["adapt", "anthropic_delta_text", "anthropic_text", "openai_delta_text", "openai_text"]
