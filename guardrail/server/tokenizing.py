"""One thread for all tokenizer work, off the event loop and off the model worker.

Fast tokenizers are not safe to drive from several threads at once, and a long prompt
takes long enough to tokenise that it must not stall the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class TokenizerThread:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="guardrail-tokenizer")

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def stop(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
