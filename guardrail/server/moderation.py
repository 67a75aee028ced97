"""A moderation session driven step by step through the batcher.

The state machine is the embedded session's own (`guardrail.model.session.ModerationState`);
only the driver differs: every forward pass is awaited from the batcher, so the chunks of
many sessions share passes.
"""

from __future__ import annotations

import asyncio

from guardrail.model.kvcache import held_tokens
from guardrail.model.prompts import PromptInput
from guardrail.model.session import ModerationState, SessionClosedError
from guardrail.server.batcher import Batcher
from guardrail.server.driver import run_batched
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChunkVerdict, GuardConfig, Verdict

__all__ = ["SessionClosedError", "SteppedSession"]


class SteppedSession:
    """One moderated stream on the sidecar: shared state machine, batched passes.

    `max_tokens` caps the response tokens it accepts (`LimitError`, on a chunk or at close).
    """

    def __init__(self, batcher: Batcher, text: TokenizerThread, config: GuardConfig, *,
                 max_tokens: int | None = None) -> None:
        self.batcher = batcher
        self.text = text
        self.config = config
        self.lock = asyncio.Lock()
        self.state = ModerationState(batcher.model, config, max_tokens=max_tokens)

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
        return await run_batched(self.batcher, self.text, self.state.start(prompt))

    async def feed(self, chunk: str) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show.
        A chunk that fails (bad text, over the limit) changes nothing."""
        async with self.lock:
            return await run_batched(self.batcher, self.text, self.state.feed(chunk))

    async def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        async with self.lock:
            return await run_batched(self.batcher, self.text, self.state.close())
