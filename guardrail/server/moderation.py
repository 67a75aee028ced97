"""A moderation session driven step by step through the batcher.

The state machine is the embedded session's own (`guardrail.model.session.ModerationState`);
only the driver differs: every forward pass is awaited from the batcher, so the chunks of
many sessions share passes.
"""

from __future__ import annotations

import asyncio
from typing import TypeVar

from guardrail.model.kvcache import held_tokens
from guardrail.model.prompts import PromptInput
from guardrail.model.session import ModerationState, SessionClosedError, StepPlan
from guardrail.server.batcher import Batcher
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChunkVerdict, GuardConfig, Verdict

__all__ = ["SessionClosedError", "SteppedSession", "run_plan_async"]

T = TypeVar("T")


async def run_plan_async(batcher: Batcher, plan: StepPlan[T]) -> T:
    """Drive a plan's forward passes through the batcher (model code stays off the loop)."""
    try:
        request = next(plan)
        while True:
            request = plan.send(await batcher.step(request))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class SteppedSession:
    """One moderated stream on the sidecar: shared state machine, batched passes."""

    def __init__(self, batcher: Batcher, text: TokenizerThread, config: GuardConfig) -> None:
        self.batcher = batcher
        self.text = text
        self.config = config
        self.lock = asyncio.Lock()
        self.state = ModerationState(batcher.model, config)

    @property
    def response(self) -> list[int]:
        return self.state.response

    @property
    def checks(self) -> int:
        return self.state.checks

    @property
    def prompt_verdict(self) -> Verdict | None:
        return self.state.prompt_verdict

    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def cached_tokens(self) -> int:
        """Token slots of keys and values this session holds, room to grow included (none
        once it is closed)."""
        return 0 if self.state.closed else held_tokens(self.state.cache)

    async def start(self, prompt: PromptInput) -> Verdict:
        """Prefill the prompt with its check riding in the same pass."""
        prompt_ids = await self.text.run(lambda: self.state.encode_prompt(prompt))
        return await run_plan_async(self.batcher, self.state.start(prompt_ids))

    async def feed(self, chunk: str) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show."""
        async with self.lock:
            self.state.ensure_open()
            new_ids = await self.text.run(lambda: self.state.tokens.feed(chunk))
            return await run_plan_async(self.batcher, self.state.advance(new_ids, final=False))

    async def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        async with self.lock:
            if self.state.closed:
                raise SessionClosedError("session is already closed")
            new_ids = await self.text.run(self.state.tokens.flush)
            return await run_plan_async(self.batcher, self.state.advance(new_ids, final=True))
