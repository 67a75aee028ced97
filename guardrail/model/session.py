"""Moderation sessions: check a stream produced by another model, chunk by chunk.

The session keeps the KV cache of everything seen, so a chunk costs work proportional to
the chunk: its new tokens and one [CLS] query go through a single forward pass.
"""

from __future__ import annotations

import threading
import time

from guardrail.model.engine import SafetyModel
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.policy import TauPolicy
from guardrail.model.prompts import PromptInput, encode_prompt, fit_prompt
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.types import ChunkVerdict, GuardConfig, Verdict


class SessionClosedError(RuntimeError):
    """A chunk arrived after the session was closed or intercepted."""


class ModerationSession:
    def __init__(self, model: SafetyModel, prompt: PromptInput, config: GuardConfig) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Lock()
        started = time.perf_counter()
        self.prompt_ids = fit_prompt(encode_prompt(model.tokenizer, prompt), model.max_context // 2)
        self.cache = model.new_cache()
        self.tokens = IncrementalTokenizer(model.tokenizer)
        self.response: list[int] = []
        self.in_cache = 0  # response tokens whose keys/values are in the cache
        self.buffer = HoldBackBuffer(config.hold_back)
        self.policy = TauPolicy.from_config(config)
        self.closed = False
        self.intercepted = False
        self.intercept_index: int | None = None
        self.released_text = ""
        self.last_score = 0.0
        out = model.step(self.cache, self.prompt_ids, check=self._query(), want_logits=False)
        score = float(out.score or 0.0)
        self.last_score = score
        self.prompt_verdict = Verdict(
            label="unsafe" if score >= config.threshold else "safe",
            score=score,
            threshold=config.threshold,
            tokens=len(self.prompt_ids),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    @property
    def prompt_len(self) -> int:
        return len(self.prompt_ids)

    def _query(self) -> ClsQuery:
        return ClsQuery(
            seen=self.prompt_len + self.in_cache, prompt_len=self.prompt_len, window=self.config.window
        )

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show."""
        with self._lock:
            if self.closed:
                raise SessionClosedError(
                    "session is closed"
                    if not self.intercepted
                    else "session was intercepted; no more chunks are accepted"
                )
            started = time.perf_counter()
            return self._advance(self.tokens.feed(chunk), final=False, started=started)

    def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        with self._lock:
            if self.closed:
                raise SessionClosedError("session is already closed")
            started = time.perf_counter()
            return self._advance(self.tokens.flush(), final=True, started=started)

    def _advance(self, new_ids: list[int], *, final: bool, started: float) -> ChunkVerdict:
        self.response.extend(new_ids)
        self.buffer.append(len(new_ids))
        score = self.last_score
        if new_ids or final:
            piece = max(1, self.model.max_context // 4)
            head, last = new_ids[: len(new_ids) - piece], new_ids[len(new_ids) - piece :]
            for start in range(0, len(head), piece):  # a huge chunk is prefilled in pieces
                part = head[start : start + piece]
                self._make_room(len(part))
                self.model.step(self.cache, part, want_logits=False)
                self.in_cache += len(part)
            self._make_room(len(last))
            out = self.model.step(self.cache, last, check=self._query_after(len(last)), want_logits=False)
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
        newly = self.tokens.text_upto(self.buffer.released)[len(self.released_text) :]
        if final and not self.intercepted and self.buffer.released == len(self.response):
            newly = self.tokens.text[len(self.released_text) :]
        self.released_text += newly
        return ChunkVerdict(
            label="unsafe" if score >= self.config.threshold else "safe",
            score=score,
            threshold=self.config.threshold,
            released=newly,
            intercepted=self.intercepted,
            intercept_index=self.intercept_index,
            tokens=len(self.response),
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    def _query_after(self, n_new: int) -> ClsQuery:
        return ClsQuery(
            seen=self.prompt_len + self.in_cache + n_new,
            prompt_len=self.prompt_len,
            window=self.config.window,
        )

    def _make_room(self, n_new: int) -> None:
        """Past the context limit, re-encode the prompt and the most recent response tokens.

        Rare by design (it costs one re-encode); the [CLS] window then starts later.
        """
        if self.prompt_len + self.in_cache + n_new + 1 <= self.model.max_context:
            return
        keep = max(0, self.model.max_context // 2 - self.prompt_len)
        recent = self.response[len(self.response) - n_new - keep : len(self.response) - n_new] if keep else []
        self.cache = self.model.new_cache()
        self.model.step(self.cache, self.prompt_ids + recent, want_logits=False)
        self.in_cache = len(recent)
