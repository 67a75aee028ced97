"""Guarded generation in the sidecar: the decoding plan of `guardrail.model.decoding`, driven
by the batched driver.

The plan is the embedded guard's own loop. Here its forward passes (token plus optional
[CLS] queries, with sampling next to the logits) join other streams' passes in the batcher,
and its tokenizer work runs on the tokenizer thread, so nothing heavy runs on the event loop.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from guardrail.model.decoding import SamplingParams, generation_plan
from guardrail.model.prompts import PromptInput
from guardrail.server.batcher import Batcher
from guardrail.server.driver import events_batched
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import GenerationEvent, GuardConfig


class SteppedGeneration:
    """One guarded generation; `events()` yields the same events as the embedded guard."""

    def __init__(self, batcher: Batcher, text: TokenizerThread, prompt: PromptInput,
                 config: GuardConfig, params: SamplingParams, *, prefill: str | None = None,
                 guard: bool = True) -> None:
        self.batcher = batcher
        self.text = text
        self.prompt = prompt
        self.config = config
        self.params = params
        self.prefill = prefill
        self.guard = guard

    async def events(self) -> AsyncIterator[GenerationEvent]:
        plan = generation_plan(self.batcher.model, self.prompt, self.config, self.params,
                               prefill=self.prefill, guard=self.guard, started=time.perf_counter())
        async for event in events_batched(self.batcher, self.text, plan):
            yield event
