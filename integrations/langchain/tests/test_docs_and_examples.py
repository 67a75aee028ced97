"""docs/integrations.md code blocks and examples/langchain_chain.py run as written."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from guardrail import Guard, GuardConfig

ROOT = Path(__file__).resolve().parents[3]


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_integrations_doc_blocks_run(base_guard: Guard, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain.agents")
    import guardrail.guard

    # `Guard()` in the docs reuses the loaded model instead of loading it again, with a threshold
    # nothing reaches: the blocks are under test here, not the head's judgement (the blocks that
    # show a cut pin it with their own strict config).
    lenient = Guard(safety_model=base_guard.model, config=GuardConfig(threshold=1.0))

    def shared(*args: Any, **kwargs: Any) -> Guard:
        return lenient if not (args or kwargs) else Guard(safety_model=base_guard.model, **kwargs)

    monkeypatch.setattr(guardrail.guard, "Guard", shared)
    text = (ROOT / "docs" / "integrations.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    namespace: dict[str, Any] = {"__name__": "docs"}
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"integrations.md[block {i}]", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"docs block {i} failed:\n{block}") from exc
    out = capsys.readouterr().out
    assert "[withheld]" in out and "I can't help with that." in out
    assert "I can't help with that (illicit" in out and "input ('illicit'" in out  # categories named
    assert "guardrail.session.chunk" in out


def test_langchain_example_runs(base_guard: Guard, capsys: pytest.CaptureFixture[str]) -> None:
    load(ROOT / "examples" / "langchain_chain.py").main(base_guard)
    out = capsys.readouterr().out
    assert "verdicts:" in out and "raised: input flagged" in out
