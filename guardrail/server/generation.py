"""Guarded generation in the sidecar: the decoding plan of `guardrail.model.decoding`, driven
through the batcher.

The plan is the embedded guard's own loop. Here its forward passes (token plus optional
[CLS] query, with sampling next to the logits) join other streams' passes in the batcher, and
its tokenizer work runs on the tokenizer thread, so nothing heavy runs on the event loop.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator
from typing import Any

from guardrail.model.decoding import (
    Detokenize,
    DropTokens,
    Encode,
    Forward,
    Sampler,
    SamplingParams,
    advance,
    encode_inputs,
    generation_plan,
)
from guardrail.model.prompts import PromptInput
from guardrail.server.batcher import Batcher
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
        started = time.perf_counter()
        model, params = self.batcher.model, self.params
        encode = functools.partial(encode_inputs, model, self.prompt, self.prefill, params)
        inputs = await self.text.run(encode)
        plan = generation_plan(model, inputs, self.config, params, guard=self.guard, started=started)
        sampler = Sampler(params)
        answer: Any = None
        while (item := advance(plan, answer)) is not None:
            answer = None
            if isinstance(item, Forward):
                pick = functools.partial(sampler.pick, sample=item.sample)
                answer = await self.batcher.step(item.request, post=pick)
            elif isinstance(item, Detokenize | Encode):
                answer = await self.text.run(item.run)
            elif isinstance(item, DropTokens):
                await self.batcher.call(item.run)  # cache surgery, in order with the passes
            else:
                yield item
