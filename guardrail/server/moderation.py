"""A moderation session driven step by step through the batcher.

The same logic as `guardrail.model.session.ModerationSession`, but every forward pass is
awaited from the batcher, so the chunks of many sessions share passes. The result for a
given chunking equals the embedded session's (tested).
"""

from __future__ import annotations

import asyncio
import time

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.policy import TauPolicy
from guardrail.model.prompts import PromptInput, encode_prompt, fit_prompt
from guardrail.model.session import SessionClosedError
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.server.batcher import Batcher
from guardrail.server.tokenizing import TokenizerThread
from guardrail.types import ChunkVerdict, GuardConfig, Verdict

__all__ = ["SessionClosedError", "SteppedSession"]


class SteppedSession:
    """KV cache, tokenizer state, hold-back buffer and tau policy of one moderated stream."""

    def __init__(self, batcher: Batcher, text: TokenizerThread, config: GuardConfig) -> None:
        self.batcher = batcher
        self.text = text
        self.model: SafetyModel = batcher.model
        self.config = config
        self.lock = asyncio.Lock()
        self.cache = self.model.new_cache()
        self.tokens = IncrementalTokenizer(self.model.tokenizer)
        self.prompt_ids: list[int] = []
        self.response: list[int] = []
        self.in_cache = 0
        self.buffer = HoldBackBuffer(config.hold_back)
        self.policy = TauPolicy.from_config(config)
        self.closed = False
        self.intercepted = False
        self.intercept_index: int | None = None
        self.released_text = ""
        self.last_score = 0.0
        self.checks = 0
        self.prompt_verdict: Verdict | None = None

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    @property
    def cached_tokens(self) -> int:
        """Tokens whose keys and values this session holds (none once it is closed)."""
        return 0 if self.closed else self.prompt_len + self.in_cache

    async def _step(self, token_ids: list[int], check: ClsQuery | None) -> StepOutput:
        out: StepOutput = await self.batcher.step(StepRequest(self.cache, token_ids, check, False))
        if check is not None:
            self.checks += 1
        return out

    async def start(self, prompt: PromptInput) -> Verdict:
        """Prefill the prompt with its check riding in the same pass."""
        started = time.perf_counter()
        tok, budget = self.model.tokenizer, self.model.max_context // 2
        self.prompt_ids = await self.text.run(lambda: fit_prompt(encode_prompt(tok, prompt), budget))
        out = await self._step(self.prompt_ids, self._query_after(0))
        score = float(out.score or 0.0)
        self.last_score = score
        self.prompt_verdict = Verdict(
            label="unsafe" if score >= self.config.threshold else "safe", score=score,
            threshold=self.config.threshold, tokens=self.prompt_len,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        return self.prompt_verdict

    async def feed(self, chunk: str) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show."""
        async with self.lock:
            if self.closed:
                raise SessionClosedError("session is closed" if not self.intercepted else
                                         "session was intercepted; no more chunks are accepted")
            started = time.perf_counter()
            new_ids = await self.text.run(lambda: self.tokens.feed(chunk))
            return await self._advance(new_ids, final=False, started=started)

    async def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        async with self.lock:
            if self.closed:
                raise SessionClosedError("session is already closed")
            started = time.perf_counter()
            new_ids = await self.text.run(self.tokens.flush)
            return await self._advance(new_ids, final=True, started=started)

    async def _advance(self, new_ids: list[int], *, final: bool, started: float) -> ChunkVerdict:
        self.response.extend(new_ids)
        self.buffer.append(len(new_ids))
        score = self.last_score
        if new_ids or final:
            piece = max(1, self.model.max_context // 4)
            head, last = new_ids[: len(new_ids) - piece], new_ids[len(new_ids) - piece :]
            for start in range(0, len(head), piece):  # a huge chunk is prefilled in pieces
                part = head[start : start + piece]
                await self._make_room(len(part))
                await self._step(part, None)
                self.in_cache += len(part)
            await self._make_room(len(last))
            out = await self._step(last, self._query_after(len(last)))
            self.in_cache += len(last)
            score = float(out.score if out.score is not None else score)
            self.last_score = score
            act = self.policy.update(score)
            unsafe = self.policy.is_unsafe(score)
            if act or (final and unsafe):
                self.buffer.intercept()
                self.closed = self.intercepted = True
                self.intercept_index = self.buffer.released
            else:
                self.buffer.on_check(len(self.response), unsafe)
                if final:
                    self.buffer.finish(not unsafe)
                    self.closed = True
        newly = self.tokens.text_upto(self.buffer.released)[len(self.released_text):]
        if final and not self.intercepted and self.buffer.released == len(self.response):
            newly = self.tokens.text[len(self.released_text):]
        self.released_text += newly
        if self.closed:  # nothing more will be checked: free the KV cache now
            self.cache = self.model.new_cache()
            self.in_cache = 0
        return ChunkVerdict(
            label="unsafe" if score >= self.config.threshold else "safe",
            score=score, threshold=self.config.threshold, released=newly,
            intercepted=self.intercepted, intercept_index=self.intercept_index,
            tokens=len(self.response), latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _query_after(self, n_new: int) -> ClsQuery:
        return ClsQuery(seen=self.prompt_len + self.in_cache + n_new, prompt_len=self.prompt_len,
                        window=self.config.window)

    async def _make_room(self, n_new: int) -> None:
        """Past the context limit, re-encode the prompt and the most recent response tokens."""
        if self.prompt_len + self.in_cache + n_new + 1 <= self.model.max_context:
            return
        keep = max(0, self.model.max_context // 2 - self.prompt_len)
        recent = self.response[len(self.response) - n_new - keep : len(self.response) - n_new] if keep else []
        self.cache = self.model.new_cache()
        await self._step(self.prompt_ids + recent, None)
        self.in_cache = len(recent)
