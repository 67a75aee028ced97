"""Moderation sessions: check a stream produced by another model, chunk by chunk.

The session keeps the KV cache of everything seen, so a chunk costs work proportional to
the chunk: its new tokens and one [CLS] query go through a single forward pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator
from typing import TypeVar

from guardrail.model.engine import SafetyModel, StepOutput, StepRequest
from guardrail.model.holdback import HoldBackBuffer
from guardrail.model.masks import ClsQuery
from guardrail.model.policy import TauPolicy
from guardrail.model.prompts import PromptInput, encode_prompt, fit_prompt
from guardrail.model.tokenstream import IncrementalTokenizer
from guardrail.types import ChunkVerdict, GuardConfig, Verdict


class SessionClosedError(RuntimeError):
    """A chunk arrived after the session was closed or intercepted."""


T = TypeVar("T")
#: A sans-IO computation: yields the forward passes it needs, receives their outputs.
StepPlan = Generator[StepRequest, StepOutput, T]


def run_plan(model: SafetyModel, plan: StepPlan[T]) -> T:
    """Drive a plan with direct engine calls (the embedded, in-process way)."""
    try:
        request = next(plan)
        while True:
            out = model.step(request.cache, request.token_ids, check=request.check,
                             want_logits=request.want_logits)
            request = plan.send(out)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


class ModerationState:
    """Everything a moderated stream knows, with the forward passes left to a driver.

    The embedded session drives it with direct engine calls; the sidecar drives it through
    its batcher, so many streams share passes. Same state machine, same results.
    """

    def __init__(self, model: SafetyModel, config: GuardConfig) -> None:
        self.model = model
        self.config = config
        self.cache = model.new_cache()
        self.tokens = IncrementalTokenizer(model.tokenizer)
        self.prompt_ids: list[int] = []
        self.response: list[int] = []
        self.in_cache = 0  # response tokens whose keys/values are in the cache
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

    def encode_prompt(self, prompt: PromptInput) -> list[int]:
        return fit_prompt(encode_prompt(self.model.tokenizer, prompt), self.model.max_context // 2)

    def _request(self, token_ids: list[int], check: ClsQuery | None) -> StepRequest:
        if check is not None:
            self.checks += 1
        return StepRequest(self.cache, token_ids, check, False)

    def start(self, prompt_ids: list[int]) -> StepPlan[Verdict]:
        """Prefill the prompt with its check riding in the same pass."""
        started = time.perf_counter()
        self.prompt_ids = prompt_ids
        out = yield self._request(prompt_ids, self._query_after(0))
        score = float(out.score or 0.0)
        self.last_score = score
        self.prompt_verdict = Verdict(
            label="unsafe" if score >= self.config.threshold else "safe", score=score,
            threshold=self.config.threshold, tokens=self.prompt_len,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        return self.prompt_verdict

    def ensure_open(self) -> None:
        if self.closed:
            raise SessionClosedError("session is closed" if not self.intercepted else
                                     "session was intercepted; no more chunks are accepted")

    def advance(self, new_ids: list[int], *, final: bool) -> StepPlan[ChunkVerdict]:
        """Append tokens, check once, apply tau and the hold-back; return the chunk verdict."""
        started = time.perf_counter()
        self.response.extend(new_ids)
        self.buffer.append(len(new_ids))
        score = self.last_score
        if new_ids or final:
            piece = max(1, self.model.max_context // 4)
            head, last = new_ids[: len(new_ids) - piece], new_ids[len(new_ids) - piece :]
            for start in range(0, len(head), piece):  # a huge chunk is prefilled in pieces
                part = head[start : start + piece]
                yield from self._make_room(len(part))
                yield self._request(part, None)
                self.in_cache += len(part)
            yield from self._make_room(len(last))
            out = yield self._request(last, self._query_after(len(last)))
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

    def _make_room(self, n_new: int) -> StepPlan[None]:
        """Past the context limit, re-encode the prompt and the most recent response tokens.

        Rare by design (it costs one re-encode); the [CLS] window then starts later.
        """
        if self.prompt_len + self.in_cache + n_new + 1 <= self.model.max_context:
            return
        keep = max(0, self.model.max_context // 2 - self.prompt_len)
        recent = self.response[len(self.response) - n_new - keep : len(self.response) - n_new] if keep else []
        self.cache = self.model.new_cache()
        yield self._request(self.prompt_ids + recent, None)
        self.in_cache = len(recent)


class ModerationSession:
    """The embedded moderation session: `feed(chunk)` per chunk, then `close()`."""

    def __init__(self, model: SafetyModel, prompt: PromptInput, config: GuardConfig) -> None:
        self.model = model
        self.config = config
        self._lock = threading.Lock()
        self.state = ModerationState(model, config)
        self.prompt_verdict = run_plan(model, self.state.start(self.state.encode_prompt(prompt)))

    @property
    def response(self) -> list[int]:
        return self.state.response

    @property
    def released_text(self) -> str:
        return self.state.released_text

    @property
    def closed(self) -> bool:
        return self.state.closed

    @property
    def intercepted(self) -> bool:
        return self.state.intercepted

    def feed(self, chunk: str | bytes) -> ChunkVerdict:
        """Add one chunk of the response; return the verdict and the text now safe to show."""
        with self._lock:
            self.state.ensure_open()
            new_ids = self.state.tokens.feed(chunk)
            return run_plan(self.model, self.state.advance(new_ids, final=False))

    def close(self) -> ChunkVerdict:
        """End of the stream: check the unfinished tail and release it if safe."""
        with self._lock:
            if self.state.closed:
                raise SessionClosedError("session is already closed")
            return run_plan(self.model, self.state.advance(self.state.tokens.flush(), final=True))
