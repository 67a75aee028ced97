"""`Guard`: the one interface applications use, in process or against a sidecar.

`Guard()` loads the default model and the shipped head in this process.
`Guard(backend="http://127.0.0.1:8000")` talks to a running `guardrail serve` instead,
with the same methods and the same return types.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.model.prompts import InputError, PromptInput

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel

from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    InterceptEvent,
    ScoreEvent,
    Verdict,
)


def load_safety_model(
    model: str | Path | None = None,
    head: str | Path | None = None,
    *,
    device: str | None = "cpu",
    dtype: str | None = None,
    max_context: int | None = None,
) -> SafetyModel:
    """Load a base model and attach a trained safety head to it."""
    from guardrail.model.engine import SafetyModel
    from guardrail.model.head import SafetyHead, default_head_dir
    from guardrail.model.loading import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    head_dir = Path(head) if head is not None else default_head_dir()
    safety_head = SafetyHead.load(head_dir)
    return SafetyModel(loaded.model, loaded.tokenizer, safety_head, name=loaded.name, max_context=max_context)


class Guard:
    """Safety checks, guarded generation and stream moderation behind one interface."""

    def __init__(
        self,
        model: str | Path | None = None,
        head: str | Path | None = None,
        *,
        backend: str | None = None,
        config: GuardConfig | None = None,
        device: str | None = "cpu",
        dtype: str | None = None,
        safety_model: SafetyModel | None = None,
        **client_options: Any,
    ) -> None:
        self.config = config or GuardConfig()
        self._remote: Any = None
        if backend not in (None, "embedded", "local"):
            from guardrail.client import GuardrailClient  # no torch import on this path

            self._remote = GuardrailClient(backend, config=self.config, **client_options)
            return
        self.model = safety_model or load_safety_model(model, head, device=device, dtype=dtype)
        if config is None:  # the head ships the threshold it was calibrated for
            self.config = GuardConfig(threshold=float(self.model.head.config.threshold))

    @property
    def threshold(self) -> float:
        return self.config.threshold

    # -- checks ---------------------------------------------------------------------------
    def check_prompt(self, prompt: PromptInput) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        if self._remote is not None:
            return self._remote.check_prompt(prompt)
        return self._check(prompt, None)

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        if self._remote is not None:
            return self._remote.check_response(prompt, response)
        from guardrail.model.prompts import clean_text

        return self._check(prompt, clean_text(response))

    def _check(self, prompt: PromptInput, response: str | None) -> Verdict:
        from guardrail.model.masks import ClsQuery
        from guardrail.model.prompts import encode_prompt, encode_text, fit_prompt

        started = time.perf_counter()
        tok = self.model.tokenizer
        response_ids = encode_text(tok, response) if response else []
        budget = self.model.max_context - 1
        prompt_ids = fit_prompt(encode_prompt(tok, prompt), budget // 2 if response_ids else budget)
        room = budget - len(prompt_ids)
        response_ids = response_ids[len(response_ids) - room :] if len(response_ids) > room else response_ids
        query = ClsQuery(
            seen=len(prompt_ids) + len(response_ids), prompt_len=len(prompt_ids), window=self.config.window
        )
        out = self.model.step(
            self.model.new_cache(), prompt_ids + response_ids, check=query, want_logits=False
        )
        score = float(out.score or 0.0)
        return Verdict(
            label="unsafe" if score >= self.config.threshold else "safe",
            score=score,
            threshold=self.config.threshold,
            tokens=query.seen,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    # -- generation -----------------------------------------------------------------------
    def generate(
        self,
        prompt: PromptInput,
        *,
        max_new_tokens: int = 128,
        prefill: str | None = None,
        guard: bool = True,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        config: GuardConfig | None = None,
    ) -> Iterator[GenerationEvent]:
        """Stream guarded generation events: token, score, intercept, done."""
        if self._remote is not None:
            yield from self._remote.generate(
                prompt,
                max_new_tokens=max_new_tokens,
                prefill=prefill,
                guard=guard,
                temperature=temperature,
                top_p=top_p,
                seed=seed,
                config=config,
            )
            return
        from guardrail.model.decoding import SamplingParams, generate_events

        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")
        params = SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        )
        yield from generate_events(
            self.model, prompt, config or self.config, params, prefill=prefill, guard=guard
        )

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end and return the final text and whether it was cut."""
        last_score: float | None = None
        done: DoneEvent | None = None
        intercept: InterceptEvent | None = None
        for event in self.generate(prompt, **kwargs):
            if isinstance(event, ScoreEvent):
                last_score = event.score
            elif isinstance(event, InterceptEvent):
                intercept = event
            elif isinstance(event, DoneEvent):
                done = event
        assert done is not None
        return GenerationResult(
            text=done.text,
            intercepted=done.intercepted,
            intercept_index=done.intercept_index,
            score=intercept.score if intercept else last_score,
            usage=done.usage,
            timings=done.timings,
        )

    # -- stream moderation ------------------------------------------------------------------
    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> Any:
        """Moderate another model's stream: `feed(chunk)` per chunk, then `close()`."""
        if self._remote is not None:
            return self._remote.session(prompt, config=config)
        from guardrail.model.session import ModerationSession

        return ModerationSession(self.model, prompt, config or self.config)

    def close(self) -> None:
        if self._remote is not None:
            self._remote.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
