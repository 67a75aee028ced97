"""Generation events folded into a `GenerationResult`: one rule for every guard.

The embedded guard, both sidecar clients and the traced wrappers run `generate` to the end
the same way; `ResultCollector.add` is the step, sync and async loops only differ in how
they iterate.
"""

from __future__ import annotations

from collections.abc import Iterable

from guardrail.types import (
    DoneEvent,
    GenerationEvent,
    GenerationResult,
    InterceptEvent,
    ScoreEvent,
    union_names,
)


class ResultCollector:
    """Keeps the last score, the interception, the done event and the fired categories of one
    generation (the done event's union, completed by the score events' in case a peer omits it)."""

    def __init__(self) -> None:
        self.last_score: float | None = None
        self.intercept: InterceptEvent | None = None
        self.done: DoneEvent | None = None
        self.flagged: list[str] = []  # categories fired at any check, in order of first firing

    def add(self, event: GenerationEvent) -> None:
        if isinstance(event, ScoreEvent):
            self.last_score = event.score
            self.flagged = union_names(self.flagged, event.flagged_categories)
        elif isinstance(event, InterceptEvent):
            self.intercept = event
        elif isinstance(event, DoneEvent):
            self.done = event

    def result(self, missing: type[Exception] = RuntimeError) -> GenerationResult:
        """The finished generation; `missing` is raised when the stream ended without `done`."""
        done = self.done
        if done is None:
            raise missing("the generation stream ended without a done event")
        flagged = union_names(done.flagged_categories, self.flagged)
        return GenerationResult(
            text=done.text, intercepted=done.intercepted, intercept_index=done.intercept_index,
            score=self.intercept.score if self.intercept else self.last_score,
            usage=done.usage, timings=done.timings, flagged_categories=flagged,
        )


def collect_result(events: Iterable[GenerationEvent], *,
                   missing: type[Exception] = RuntimeError) -> GenerationResult:
    """Run a sync event stream to the end."""
    collector = ResultCollector()
    for event in events:
        collector.add(event)
    return collector.result(missing)


__all__ = ["ResultCollector", "collect_result"]
