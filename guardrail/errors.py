"""Exceptions raised where the guard acts, so callers can catch one type and read the verdict."""

from __future__ import annotations

from typing import Literal

from guardrail.types import ChunkVerdict, Verdict

Stage = Literal["input", "output", "stream"]


class GuardrailViolation(Exception):
    """The guard flagged a request, a response or a stream.

    `verdict` is the `Verdict` of a check (stages "input" and "output") or the `ChunkVerdict`
    of the moderation session that cut a stream ("stream"). `released` is the text that had
    already been shown before the cut, so a chat UI can keep it and append a notice.
    """

    def __init__(
        self,
        verdict: Verdict | ChunkVerdict,
        *,
        stage: Stage,
        released: str = "",
        message: str | None = None,
    ) -> None:
        self.verdict = verdict
        self.stage: Stage = stage
        self.released = released
        if message is None and verdict.blocked_categories:
            message = (f"guardrail flagged the {stage} (blocked categories: "
                       f"{', '.join(verdict.blocked_categories)}; score {verdict.score:.3f})")
        super().__init__(message or f"guardrail flagged the {stage} (score {verdict.score:.3f} "
                                    f">= threshold {verdict.threshold:.3f})")

    @property
    def score(self) -> float:
        return self.verdict.score

    @property
    def flagged_categories(self) -> list[str]:
        """The categories that fired at the flagged check (names only)."""
        return list(self.verdict.flagged_categories)


__all__ = ["GuardrailViolation", "Stage"]
