"""The sidecar hands freed heap memory back: on schedule, only after work, between passes
and when idle; and releases the batched passes' scratch when idle."""

from __future__ import annotations

import asyncio
import time

import pytest

from guardrail.model.engine import SafetyModel, StepRequest
from guardrail.server.batcher import Batcher
from guardrail.server.memory import HeapTrimmer

pytestmark = pytest.mark.skipif(not HeapTrimmer().available, reason="malloc_trim needs glibc")


def test_trims_after_work_at_most_once_per_interval() -> None:
    now = [100.0]
    trimmer = HeapTrimmer(2.0, clock=lambda: now[0])
    now[0] += 5
    assert not trimmer.maybe_trim()  # nothing was freed since the last trim
    trimmer.mark()
    assert trimmer.maybe_trim()
    trimmer.mark()
    assert not trimmer.maybe_trim()  # too soon
    now[0] += 2.0
    assert trimmer.maybe_trim() and trimmer.trims == 2


def test_interval_zero_turns_it_off() -> None:
    trimmer = HeapTrimmer(0.0)
    trimmer.mark()
    assert not trimmer.available and not trimmer.maybe_trim()


def test_batcher_trims_after_passes_and_frees_scratch_when_idle(tiny: SafetyModel) -> None:
    tiny.step_many([StepRequest(tiny.new_cache(), [1, 2]), StepRequest(tiny.new_cache(), [3])])
    assert tiny._scratch._buffers  # a batched pass leaves its scratch for the next one
    batcher = Batcher(tiny, heap_trim_interval_s=0.05)
    batcher.start()
    try:
        async def two_streams() -> None:
            caches = [tiny.new_cache(), tiny.new_cache()]
            await asyncio.gather(*(batcher.step(StepRequest(c, [5, 6, 7])) for c in caches))

        asyncio.run(two_streams())
        deadline = time.monotonic() + 5
        while batcher.trimmer.trims == 0 or tiny._scratch._buffers:
            assert time.monotonic() < deadline, "an idle worker should trim and drop its scratch"
            time.sleep(0.02)
        trims = batcher.trimmer.trims
        time.sleep(0.3)
        assert batcher.trimmer.trims == trims  # idle with nothing freed: no more trims
    finally:
        batcher.stop()
