"""Fixtures: the real default model once per run, and guards whose thresholds pin the outcome."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from guardrail import Guard, GuardConfig


@pytest.fixture(scope="session")
def base_guard() -> Iterator[Guard]:
    yield Guard()


@pytest.fixture(scope="session")
def allow(base_guard: Guard) -> Guard:
    """Flags (practically) nothing: no score reaches 1.0."""
    return Guard(safety_model=base_guard.model, config=GuardConfig(threshold=1.0, tau=1, hold_back=2))


@pytest.fixture(scope="session")
def flag(base_guard: Guard) -> Guard:
    """Flags every check and acts on the first one."""
    return Guard(safety_model=base_guard.model, config=GuardConfig(threshold=0.0, tau=1, hold_back=0))
