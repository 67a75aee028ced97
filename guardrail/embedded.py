"""`EmbeddedGuard`: the model and its safety head in this process.

`Guard()` delegates here; `Guard(backend=URL)` delegates to the sidecar client instead.
Heavy imports (torch, transformers) happen only when a model is loaded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.events import collect_result
from guardrail.moderation import ModerationInput, ModerationResponse, moderation_response, moderation_texts
from guardrail.types import (
    GenerationEvent,
    GenerationResult,
    GuardConfig,
    PromptInput,
    Verdict,
    merge_config,
)

if TYPE_CHECKING:
    from guardrail.model.engine import SafetyModel
    from guardrail.model.quantize import QuantizeChoice
    from guardrail.protocols import SessionProtocol


def load_safety_model(
    model: str | Path | None = None,
    head: str | Path | None = None,
    *,
    device: str | None = "cpu",
    dtype: str | None = None,
    max_context: int | None = None,
    quantize: QuantizeChoice = "auto",
) -> SafetyModel:
    """Load a base model and attach a trained safety head to it.

    `quantize="auto"` (the default) runs the int8 CPU path on a CPU in fp32, whose head and
    threshold match the fp32 head's quality (model card), and fp32/bf16 elsewhere; "none" keeps
    fp32 on the CPU too.
    """
    from guardrail.model.engine import SafetyModel
    from guardrail.model.head import SafetyHead
    from guardrail.model.loading import load_model, resolve_head_dir

    loaded = load_model(model, device=device, dtype=dtype, quantize=quantize)
    # int8 features get the head calibrated on them (`<head>/int8/`), when the head has one
    safety_head = SafetyHead.load(resolve_head_dir(head, loaded.quantize))
    return SafetyModel(loaded.model, loaded.tokenizer, safety_head, name=loaded.name, max_context=max_context)


class EmbeddedGuard:
    """Checks, guarded generation and stream moderation by a model in this process.

    Without `config`, the head's calibrated threshold applies; a config overrides only the
    fields it set (as the sidecar does), so both give the same verdict.
    """

    def __init__(self, safety_model: SafetyModel, config: GuardConfig | None = None) -> None:
        self.model = safety_model
        calibrated = GuardConfig(threshold=float(safety_model.head.config.threshold))
        self.config = merge_config(calibrated, config)

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def model_name(self) -> str:
        return self.model.name

    # -- checks ---------------------------------------------------------------------------
    def check_prompt(self, prompt: PromptInput) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        return self._checks([(prompt, None)])[0]

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        return self._checks([(prompt, response)])[0]

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        """One verdict per request; the forward passes are batched."""
        return self._checks([(p, None) for p in prompts])

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        """One verdict per (request, response) pair; the forward passes are batched."""
        return self._checks(list(pairs))

    def moderations(self, input: ModerationInput, *, config: GuardConfig | None = None) -> ModerationResponse:
        """OpenAI's moderation call: each input checked as a request, all in one batched pass."""
        texts = moderation_texts(input)
        verdicts = self._checks([(text, None) for text in texts], merge_config(self.config, config))
        return moderation_response(verdicts, self.model.name)

    def _checks(self, items: Sequence[tuple[PromptInput, str | None]],
                config: GuardConfig | None = None) -> list[Verdict]:
        """The one-shot check, planned once in the engine: one [CLS] query per conversation, one pass."""
        from guardrail.model.check import run_checks

        return run_checks(self.model, items, config or self.config) if items else []

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
        from guardrail.model.decoding import SamplingParams, generate_events
        from guardrail.model.prompts import InputError

        if max_new_tokens < 1:
            raise InputError("max_new_tokens must be >= 1")
        params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                seed=seed)
        yield from generate_events(self.model, prompt, merge_config(self.config, config), params,
                                   prefill=prefill, guard=guard)

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end and return the final text and whether it was cut."""
        return collect_result(self.generate(prompt, **kwargs))

    # -- stream moderation ----------------------------------------------------------------
    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> SessionProtocol:
        """Moderate another model's stream: `feed(chunk)` per chunk, then `close()`."""
        from guardrail.model.session import ModerationSession

        session = ModerationSession(self.model, prompt, merge_config(self.config, config))
        # ModerationSession.prompt_verdict is inferred as `Verdict` where the protocol's
        # mutable attribute is `Verdict | None`: annotate it there (or make it read-only here)
        return session

    def close(self) -> None:
        """Nothing to release: the model lives as long as the guard."""

    def __enter__(self) -> EmbeddedGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EmbeddedGuard", "load_safety_model"]
