"""Strategic decoding driven step by step through the batcher.

The same loop as `guardrail.model.decoding.generate_events`, but each decode step (token
plus optional [CLS] query) is awaited from the batcher, so concurrent generations share
forward passes. Sampling runs in the worker thread next to the logits. Events equal the
embedded generator's for greedy decoding (tested).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import torch

from guardrail.model.decoding import JUSTIFY_TOKENS, REFUSAL, SamplingParams, _eos_ids, sample_next
from guardrail.model.engine import StepOutput, StepRequest
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.policy import CheckSchedule, TauPolicy
from guardrail.model.prompts import PromptInput, encode_prompt, encode_text, fit_prompt
from guardrail.model.tokenstream import IncrementalDetokenizer
from guardrail.server.batcher import Batcher
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    TokenEvent,
    Usage,
)
from guardrail.types import Timings as _Timings

Sampled = tuple[int | None, float | None]


class SteppedGeneration:
    """One guarded generation; `events()` yields the same events as the embedded loop."""

    def __init__(self, batcher: Batcher, text: TokenizerThread, prompt: PromptInput,
                 config: GuardConfig, params: SamplingParams, *, prefill: str | None = None,
                 guard: bool = True) -> None:
        self.batcher = batcher
        self.text = text
        self.model = batcher.model
        self.prompt = prompt
        self.config = config
        self.params = params
        self.prefill = prefill
        self.guard = guard
        self.generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
        self.cache = self.model.new_cache()
        self.response: list[int] = []
        self.buffer = HoldBackBuffer(config.hold_back if guard else 0)
        self.policy = TauPolicy.from_config(config)
        self.detok = IncrementalDetokenizer(self.model.tokenizer)
        self.out_text = ""
        self.checks = 0
        self.prompt_len = 0

    def _sampler(self, want: bool) -> Callable[[StepOutput], Sampled]:
        params, generator = self.params, self.generator

        def post(out: StepOutput) -> Sampled:
            token = sample_next(out.logits, params, generator) if want and out.logits is not None else None
            return token, out.score

        return post

    async def _step(self, ids: list[int], check: ClsQuery | None, *, sample: bool = True) -> Sampled:
        result: Sampled = await self.batcher.step(StepRequest(self.cache, ids, check, sample),
                                                  post=self._sampler(sample))
        if result[1] is not None:
            self.checks += 1
        return result

    def _query(self) -> ClsQuery:
        return ClsQuery(seen=self.prompt_len + len(self.response), prompt_len=self.prompt_len,
                        window=self.config.window)

    async def _release(self, n: int, *, final: bool = False) -> TokenEvent | None:
        start = self.buffer.released - n
        ids = self.response[start : start + n]
        piece = await self.text.run(lambda: self.detok.add(ids, final=final)) if n or final else ""
        if not piece:
            return None
        self.out_text += piece
        return TokenEvent(index=start, text=piece)

    async def events(self) -> AsyncIterator[GenerationEvent]:
        started = time.perf_counter()
        first_token_ms: float | None = None
        tok, params, config, guard = self.model.tokenizer, self.params, self.config, self.guard
        budget = max(self.model.max_context - params.max_new_tokens - JUSTIFY_TOKENS - 64, 32)
        prompt_ids = await self.text.run(lambda: fit_prompt(encode_prompt(tok, self.prompt), budget))
        prefill_ids = await self.text.run(lambda: encode_text(tok, self.prefill) if self.prefill else [])
        self.prompt_len = len(prompt_ids)
        schedule = CheckSchedule(config.strategy, config.period)
        eos = set(_eos_ids(self.model))
        intercepted: InterceptEvent | None = None

        token, score = await self._step(prompt_ids, self._query() if guard and config.check_prompt else None,
                                        sample=not prefill_ids)
        if score is not None:
            flagged = score >= config.threshold
            yield ScoreEvent(index=0, score=score, unsafe=flagged, streak=int(flagged))
            if flagged:
                intercepted = InterceptEvent(index=0, score=score, action=config.action, stage="prompt")
        if intercepted is None and prefill_ids:
            self.response.extend(prefill_ids)
            self.buffer.append(len(prefill_ids))
            token, score = await self._step(prefill_ids, self._query() if guard else None)
            if score is not None:
                for event in await self._record(score):
                    if isinstance(event, InterceptEvent):
                        intercepted = event
                    else:
                        yield event

        generated = 0
        while intercepted is None and generated < params.max_new_tokens and token is not None:
            if token in eos:
                break
            generated += 1
            self.response.append(token)
            self.buffer.append(1)
            do_check = guard and schedule.should_check(len(self.response))
            token, score = await self._step([token], self._query() if do_check else None,
                                            sample=generated < params.max_new_tokens)
            if score is not None:
                for event in await self._record(score):
                    if isinstance(event, InterceptEvent):
                        intercepted = event
                    else:
                        yield event
            elif not guard:
                self.buffer.cleared = self.buffer.total
                released = await self._release(self.buffer.on_check(self.buffer.total, unsafe=False))
                if released:
                    first_token_ms = first_token_ms or (time.perf_counter() - started) * 1000
                    yield released
            if first_token_ms is None and self.buffer.released:
                first_token_ms = (time.perf_counter() - started) * 1000

        if intercepted is None:
            safe = True
            if guard and self.buffer.cleared < len(self.response):
                _, score = await self._step([], self._query(), sample=False)
                assert score is not None
                for event in await self._record(score, final=True):
                    if isinstance(event, InterceptEvent):
                        intercepted = event
                    else:
                        yield event
                safe = intercepted is None and score < config.threshold
            if intercepted is None:
                released = await self._release(self.buffer.finish(safe or not guard), final=True)
                if released:
                    yield released

        if intercepted is not None:
            yield intercepted
            if config.action == "refuse":
                async for event in self._refuse(eos):
                    yield event

        yield DoneEvent(
            text=self.out_text, intercepted=intercepted is not None,
            intercept_index=intercepted.index if intercepted is not None else None,
            usage=Usage(prompt_tokens=len(prompt_ids), completion_tokens=len(self.response),
                        checks=self.checks),
            timings=_Timings(total_ms=(time.perf_counter() - started) * 1000, first_token_ms=first_token_ms),
        )

    async def _record(self, score: float, *, final: bool = False) -> list[GenerationEvent]:
        """Apply one check to policy and buffer; return its events (an intercept comes last)."""
        act = self.policy.update(score)
        unsafe = self.policy.is_unsafe(score)
        events: list[GenerationEvent] = [
            ScoreEvent(index=len(self.response), score=score, unsafe=unsafe, streak=self.policy.streak)
        ]
        if act or (final and unsafe):
            self.buffer.intercept()
            events.append(InterceptEvent(index=self.buffer.released, score=score, action=self.config.action))
            return events
        released = await self._release(self.buffer.on_check(len(self.response), unsafe))
        if released:
            events.append(released)
        return events

    async def _refuse(self, eos: set[int]) -> AsyncIterator[GenerationEvent]:
        """Drop withheld tokens, insert the refusal, let the model justify it (checked once)."""
        withheld = len(self.response) - self.buffer.released
        if withheld:
            cache = self.cache
            await self.batcher.call(lambda: cache.crop(-withheld))
            del self.response[self.buffer.released :]
        prefix = (" " if self.out_text and not self.out_text.endswith((" ", "\n")) else "") + REFUSAL
        tok = self.model.tokenizer
        refusal_ids = await self.text.run(lambda: encode_text(tok, prefix))
        self.out_text += prefix
        yield TokenEvent(index=len(self.response), text=prefix)
        token, _ = await self._step(refusal_ids, None)
        justification: list[int] = []
        for i in range(JUSTIFY_TOKENS):
            if token is None or token in eos:
                break
            justification.append(token)
            token, _ = await self._step([token], None, sample=i + 1 < JUSTIFY_TOKENS)
        if justification:
            seen = self.prompt_len + len(self.response) + len(refusal_ids) + len(justification)
            check = ClsQuery(seen=seen, prompt_len=self.prompt_len, window=self.config.window)
            score: Any = None
            if self.guard:  # not counted in usage.checks, as in the embedded loop
                out: StepOutput = await self.batcher.step(StepRequest(self.cache, [], check, False))
                score = out.score
            if score is None or score < self.config.threshold:
                detok = IncrementalDetokenizer(tok)
                piece = await self.text.run(lambda: detok.add(justification, final=True))
                self.out_text += piece
                yield TokenEvent(index=len(self.response) + len(refusal_ids), text=piece)
