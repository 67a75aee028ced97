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
- `check_prompt`: cannot be switched off when the server checks prompts;
- `categories.<name>.action`: at least the server's, in the order block > flag > allow;
- `categories.<name>.threshold`: lower or equal, where an unset threshold means the head's
  calibrated one (for a category the server's rules do not name, the server's rule is flag at
  the head's threshold), unless the server allows that category (then anything goes).
`action` (refuse or stop) is neither stricter nor laxer and is always the caller's choice.
A category the head does not score is left to the engine's check of names (422 naming it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from guardrail.types import DEFAULT_CATEGORY_RULE, CategoryRule, GuardConfig

STRATEGY_DENSITY = {"first": 0, "periodic": 1, "annealing": 2, "each": 3}
"""How densely each strategy schedules checks; a request may only move up this order."""

CATEGORY_STRICTNESS = {"allow": 0, "flag": 1, "block": 2}
"""How much a category's action does; a request may only move up this order."""


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


def _limit(rule: CategoryRule, head_threshold: float) -> float:
    return rule.threshold if rule.threshold is not None else head_threshold


def category_relaxations(server: Mapping[str, CategoryRule], effective: Mapping[str, CategoryRule],
                         head_thresholds: Mapping[str, float]) -> list[Relaxation]:
    """The category rules of `effective` that act less or fire later than the server's."""
    found: list[Relaxation] = []
    for name in head_thresholds:
        mine, theirs = server.get(name, DEFAULT_CATEGORY_RULE), effective.get(name, DEFAULT_CATEGORY_RULE)
        if mine.action == "allow":
            continue  # nothing the server reports for it: any rule is as strict or stricter
        if CATEGORY_STRICTNESS[theirs.action] < CATEGORY_STRICTNESS[mine.action]:
            found.append(Relaxation(f"categories.{name}.action", theirs.action, mine.action,
                                    "must be as strict or stricter: block > flag > allow"))
        elif _limit(theirs, head_thresholds[name]) > _limit(mine, head_thresholds[name]):
            found.append(Relaxation(f"categories.{name}.threshold", _limit(theirs, head_thresholds[name]),
                                    _limit(mine, head_thresholds[name]),
                                    "must be <= the server's (unset: the head's calibrated threshold)"))
    return found


def relaxations(server: GuardConfig, effective: GuardConfig, *,
                max_context: int | None = None,
                category_thresholds: Mapping[str, float] | None = None) -> list[Relaxation]:
    """The fields where `effective` would let through what `server` would stop (empty: allowed).

    `category_thresholds` are the head's calibrated ones, by name (`SafetyHead.category_thresholds`).
    """
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
    found.extend(category_relaxations(server.categories, effective.categories, category_thresholds or {}))
    return found
