"""The sidecar hands freed heap memory back: trims on schedule, between passes and when idle."""

from __future__ import annotations

import time

from guardrail.model.engine import SafetyModel
from guardrail.server.batcher import Batcher
from guardrail.server.memory import HeapTrimmer


def test_trims_at_most_once_per_interval() -> None:
    now = [100.0]
    trimmer = HeapTrimmer(2.0, clock=lambda: now[0])
    assert trimmer.available  # glibc on Linux
    assert not trimmer.maybe_trim()
    now[0] += 2.5
    assert trimmer.maybe_trim()
    assert not trimmer.maybe_trim()
    now[0] += 2.0
    assert trimmer.maybe_trim() and trimmer.trims == 2


def test_interval_zero_turns_it_off() -> None:
    trimmer = HeapTrimmer(0.0)
    assert not trimmer.available and not trimmer.maybe_trim()


def test_idle_batcher_trims(tiny: SafetyModel) -> None:
    batcher = Batcher(tiny, heap_trim_interval_s=0.05)
    batcher.start()
    try:
        time.sleep(0.5)
        assert batcher.trimmer.trims >= 3
    finally:
        batcher.stop()
    assert not batcher.running
