"""When to check (strategies) and when to act (threshold and tau consecutive unsafe checks)."""

from __future__ import annotations

from dataclasses import dataclass

from guardrail.types import GuardConfig, label_for


class CheckSchedule:
    """Decides at which response lengths a [CLS] check runs.

    - each: after every token;
    - first: after the first response token only (the prompt check covers the rest);
    - periodic: every `period` tokens;
    - annealing: dense early, where jailbreaks bite, sparser later (gap 1, 2, 4 ... up to `period`).
    """

    def __init__(self, strategy: str, period: int = 4) -> None:
        if strategy not in ("each", "first", "periodic", "annealing"):
            raise ValueError(f"unknown strategy {strategy!r}; use each, first, periodic or annealing")
        if period < 1:
            raise ValueError("period must be >= 1")
        self.strategy = strategy
        self.period = period
        self._next = 1

    def should_check(self, n_tokens: int) -> bool:
        """Whether to check once the response holds `n_tokens` tokens (n_tokens >= 1)."""
        if self.strategy == "each":
            return True
        if self.strategy == "first":
            return n_tokens == 1
        if self.strategy == "periodic":
            return n_tokens % self.period == 0
        if n_tokens < self._next:
            return False
        gap = min(self.period, max(1, 1 << (n_tokens.bit_length() // 2)))
        self._next = n_tokens + gap
        return True

    def positions(self, start: int, end: int) -> list[int]:
        """The scheduled response lengths in (start, end], in order.

        Call it with consecutive ranges: the annealing schedule remembers where it is. How
        the range is split into calls changes nothing, so checks sit on token positions,
        never on chunk boundaries.
        """
        return [n for n in range(start + 1, end + 1) if self.should_check(n)]


@dataclass
class TauPolicy:
    """Acts only after `tau` consecutive unsafe checks, which damps single noisy scores."""

    threshold: float = 0.5
    tau: int = 3
    streak: int = 0

    def update(self, score: float) -> bool:
        """Record one check; return True when the guard must act."""
        if self.is_unsafe(score):
            self.streak += 1
        else:
            self.streak = 0
        return self.streak >= self.tau

    def is_unsafe(self, score: float) -> bool:
        return label_for(score, self.threshold) == "unsafe"

    @classmethod
    def from_config(cls, config: GuardConfig) -> TauPolicy:
        return cls(threshold=config.threshold, tau=config.tau)
