"""The batched driver: runs the engine's plans (`guardrail.model.plans`) for the server.

Forward passes join other streams' passes in the batcher (sampling, a plan's `post`, runs on
the model worker next to the logits), tokenizer work runs on the tokenizer thread, cache work
on the model worker in order with the passes. Nothing heavy runs on the event loop. The
other driver, in place, is `guardrail.model.plans.events_in_place` / `run_in_place`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from guardrail.model.plans import CacheWork, Forward, ForwardAll, Plan, TokenizerWork, _Done, is_work, resume
from guardrail.server.batcher import Batcher
from guardrail.server.tokenizing import TokenizerThread

T = TypeVar("T")


async def perform_batched(batcher: Batcher, text: TokenizerThread, item: Any) -> Any:
    """Do one piece of work the server's way."""
    if isinstance(item, Forward):
        return await batcher.step(item.request, post=item.post)
    if isinstance(item, ForwardAll):
        return list(await asyncio.gather(*(batcher.step(r) for r in item.requests)))
    if isinstance(item, TokenizerWork):
        return await text.run(item.run)
    if isinstance(item, CacheWork):
        return await batcher.call(item.run)
    raise TypeError(f"not a piece of engine work: {type(item).__name__}")


async def events_batched(batcher: Batcher, text: TokenizerThread, plan: Plan[Any],
                         result: list[Any] | None = None) -> AsyncIterator[Any]:
    """Drive a plan through the batcher: yield its events; append its result to `result`."""
    answer: Any = None
    error: BaseException | None = None
    while not isinstance(item := resume(plan, answer, error), _Done):
        answer, error = None, None
        if not is_work(item):
            yield item
            continue
        try:
            answer = await perform_batched(batcher, text, item)
        except Exception as exc:
            error = exc
    if result is not None:
        result.append(item.value)


async def run_batched(batcher: Batcher, text: TokenizerThread, plan: Plan[T]) -> T:
    """Drive a plan that produces no events through the batcher; return its result."""
    result: list[T] = []
    async for event in events_batched(batcher, text, plan, result):
        raise TypeError(f"this plan yields events ({type(event).__name__}); use events_batched")
    return result[0]
