"""The operator floor: a request's config may make the guard stricter than the server's, never laxer.

Every route that takes a config (check, generate, sessions, chat completions) goes through
`ServerState.config_for`, which merges the request's config over the server's calibrated
default and then asks `relaxations` whether any field moved the laxer way. The operator can
lift the floor with `guardrail serve --allow-request-relaxation`.

What counts as stricter, field by field:
- `threshold`: lower or equal (more text scores as unsafe);
- `tau`: lower or equal (fewer unsafe checks in a row before the guard acts);
- `hold_back`: higher or equal (more text withheld until a check covers it);
- `strategy`: denser or equal, in the order each > annealing > periodic > first;
- `period`: lower or equal while both strategies space checks by it (periodic, annealing);
- `window`: none (the whole response) or at least as wide as the server's;
- `check_prompt`: cannot be switched off when the server checks prompts.
`action` (refuse or stop) is neither stricter nor laxer and is always the caller's choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from guardrail.types import GuardConfig

STRATEGY_DENSITY = {"first": 0, "periodic": 1, "annealing": 2, "each": 3}
"""How densely each strategy schedules checks; a request may only move up this order."""


@dataclass(frozen=True)
class Relaxation:
    """One field of a request's config that is laxer than the server's."""

    field: str
    requested: object
    server: object
    rule: str

    def message(self, prefix: str = "config") -> str:
        return (f"{prefix}.{self.field}={self.requested!r} is laxer than the server's "
                f"{self.server!r} ({self.rule}); the server allows stricter configs only")


def _width(window: int | None, max_context: int | None) -> float:
    """How many response tokens [CLS] sees; a window as wide as the context is no window."""
    if window is None or (max_context is not None and window >= max_context):
        return float("inf")
    return float(window)


def relaxations(server: GuardConfig, effective: GuardConfig, *,
                max_context: int | None = None) -> list[Relaxation]:
    """The fields where `effective` would let through what `server` would stop (empty: allowed)."""
    found: list[Relaxation] = []

    def laxer(name: str, rule: str) -> None:
        found.append(Relaxation(name, getattr(effective, name), getattr(server, name), rule))

    if effective.threshold > server.threshold:
        laxer("threshold", "must be <= the server's")
    if effective.tau > server.tau:
        laxer("tau", "must be <= the server's")
    if effective.hold_back < server.hold_back:
        laxer("hold_back", "must be >= the server's")
    if STRATEGY_DENSITY[effective.strategy] < STRATEGY_DENSITY[server.strategy]:
        laxer("strategy", "must be as dense or denser: each > annealing > periodic > first")
    spaced = ("periodic", "annealing")  # the strategies whose gaps `period` bounds
    if effective.strategy in spaced and server.strategy in spaced and effective.period > server.period:
        laxer("period", "must be <= the server's while the strategy spaces checks by it")
    if _width(effective.window, max_context) < _width(server.window, max_context):
        laxer("window", "must be null or at least as wide as the server's")
    if server.check_prompt and not effective.check_prompt:
        laxer("check_prompt", "the server checks prompts")
    return found
