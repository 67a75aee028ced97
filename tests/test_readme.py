"""Every Python block in README.md runs as written.

`Guard()` reuses the session's loaded model; blocks that talk to a sidecar at
http://127.0.0.1:8000 get a real one (the same model, on a free loopback port) instead.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from guardrail import Guard
from guardrail.server import Settings, create_app
from tests.test_server_support import ServerThread

ROOT = Path(__file__).resolve().parents[1]
SIDECAR = "http://127.0.0.1:8000"


def readme_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.fixture(scope="module")
def sidecar(guard: Guard) -> Iterator[str]:
    with ServerThread(create_app(Settings(), guard.model)) as server:
        yield server.url


def test_readme_has_python_blocks() -> None:
    assert len(readme_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_block_runs(index: int, guard: Guard, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str], request: pytest.FixtureRequest) -> None:
    import guardrail.guard

    real = guardrail.guard.Guard

    def shared(*args: Any, **kwargs: Any) -> Guard:
        """`Guard()` reuses the loaded model; `Guard(backend=...)` is the real client."""
        if "backend" in kwargs:
            return real(*args, **kwargs)
        return real(*args, safety_model=guard.model, **kwargs)

    monkeypatch.setattr(guardrail.guard, "Guard", shared)
    block = readme_blocks()[index]
    if SIDECAR in block:
        block = block.replace(SIDECAR, request.getfixturevalue("sidecar"))
    namespace: dict[str, Any] = {"__name__": "readme"}
    try:
        exec(compile(block, f"README.md[python block {index}]", "exec"), namespace)
    except Exception as exc:  # name the block that failed
        raise AssertionError(f"README block {index} failed:\n{block}") from exc
    if "session.feed" in block:  # the moderated stream printed exactly what it was fed
        out = capsys.readouterr().out
        assert out.strip() == "Mix flour, water and salt; knead and bake."
