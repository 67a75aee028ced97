"""`Guard`: the one interface applications use, in process or against a sidecar.

`Guard()` loads the default model and the shipped head in this process (an `EmbeddedGuard`).
`Guard(backend="http://127.0.0.1:8000")` talks to a running `guardrail serve` instead (a
`GuardrailClient`), with the same methods and the same return types. The choice is made once,
here; every method delegates to the implementation chosen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guardrail.embedded import EmbeddedGuard, load_safety_model
from guardrail.moderation import ModerationInput, ModerationResponse
from guardrail.types import GenerationEvent, GenerationResult, GuardConfig, PromptInput, Verdict

if TYPE_CHECKING:
    from guardrail.client import GuardrailClient
    from guardrail.model.engine import SafetyModel
    from guardrail.model.quantize import QuantizeChoice
    from guardrail.protocols import SessionProtocol

EMBEDDED_BACKENDS = (None, "embedded", "local")


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
        quantize: QuantizeChoice = "auto",
        safety_model: SafetyModel | None = None,
        **client_options: Any,
    ) -> None:
        self._impl: EmbeddedGuard | GuardrailClient
        if backend not in EMBEDDED_BACKENDS:
            from guardrail.client import GuardrailClient  # no torch import on this path

            assert backend is not None
            self._impl = GuardrailClient(backend, config=config, **client_options)
        else:
            loaded = safety_model or load_safety_model(model, head, device=device, dtype=dtype,
                                                         quantize=quantize)
            self._impl = EmbeddedGuard(loaded, config)

    @property
    def implementation(self) -> EmbeddedGuard | GuardrailClient:
        """The guard doing the work: an `EmbeddedGuard` or a `GuardrailClient`."""
        return self._impl

    @property
    def _remote(self) -> GuardrailClient | None:
        """The sidecar client, when this guard talks to one."""
        return None if isinstance(self._impl, EmbeddedGuard) else self._impl

    @property
    def model(self) -> SafetyModel:
        """The loaded model (embedded guards only)."""
        if not isinstance(self._impl, EmbeddedGuard):
            raise AttributeError("a Guard with a backend has no local model; the sidecar holds it")
        return self._impl.model

    @property
    def model_name(self) -> str | None:
        """The model's name: the local one's, or the sidecar's once it said it."""
        if isinstance(self._impl, EmbeddedGuard):
            return self._impl.model.name
        return self._impl.model_name

    @property
    def config(self) -> GuardConfig:
        """The effective config: the calibrated defaults with the fields the caller set."""
        if isinstance(self._impl, EmbeddedGuard):
            return self._impl.config
        return self._impl.effective_config()

    @config.setter
    def config(self, config: GuardConfig) -> None:
        if isinstance(self._impl, EmbeddedGuard):
            self._impl.config = config
        else:
            self._impl.options.config = config

    @property
    def threshold(self) -> float:
        return self.config.threshold

    # -- checks -------------------------------------------------------------------------------
    def check_prompt(self, prompt: PromptInput) -> Verdict:
        """Is this request (a string or chat messages) malicious?"""
        return self._impl.check_prompt(prompt)

    def check_response(self, prompt: PromptInput, response: str) -> Verdict:
        """Is this response, to this request, unsafe to show?"""
        return self._impl.check_response(prompt, response)

    def check_prompts(self, prompts: Sequence[PromptInput]) -> list[Verdict]:
        """One verdict per request, batched."""
        return self._impl.check_prompts(prompts)

    def check_responses(self, pairs: Sequence[tuple[PromptInput, str]]) -> list[Verdict]:
        """One verdict per (request, response) pair, batched."""
        return self._impl.check_responses(pairs)

    def moderations(self, input: ModerationInput, *, config: GuardConfig | None = None) -> ModerationResponse:
        """OpenAI's moderation call (`client.moderations.create`): one result per input, in order."""
        return self._impl.moderations(input, config=config)

    # -- generation -----------------------------------------------------------------------------
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
        return self._impl.generate(prompt, max_new_tokens=max_new_tokens, prefill=prefill, guard=guard,
                                   temperature=temperature, top_p=top_p, seed=seed, config=config)

    def generate_text(self, prompt: PromptInput, **kwargs: Any) -> GenerationResult:
        """Run `generate` to the end and return the final text and whether it was cut."""
        return self._impl.generate_text(prompt, **kwargs)

    # -- stream moderation ----------------------------------------------------------------------
    def session(self, prompt: PromptInput, *, config: GuardConfig | None = None) -> SessionProtocol:
        """Moderate another model's stream: `feed(chunk)` per chunk, then `close()`."""
        return self._impl.session(prompt, config=config)

    def close(self) -> None:
        self._impl.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["EmbeddedGuard", "Guard", "load_safety_model"]
