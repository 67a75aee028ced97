"""A small evaluation on the real default model and shipped head: report files and plots."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest

from guardrail.eval import run_eval, select_items
from guardrail.types import GuardConfig

pytestmark = pytest.mark.model


def test_small_eval_writes_report_and_plots(guard: Any, tmp_path: Path) -> None:
    from guardrail.guard import Guard

    # The shipped model and threshold. The prompt check is left to check_prompt (prompt-level
    # metrics) so that every generation is checked token by token and the score plot has data;
    # "stop" skips the refusal's justification to keep the test short.
    config = GuardConfig(threshold=guard.threshold, check_prompt=False, action="stop")
    small = Guard(safety_model=guard.model, config=config)
    items = select_items(["direct", "benign", "prefill"], limit=1, seed=0)
    assert len(items) == 6  # one request each; the prefill request at all four lengths
    result = run_eval(small, items=items, output=tmp_path, max_new_tokens=12, progress=False)

    for name in (
        "report.json",
        "report.md",
        "asr_by_attack.png",
        "score_over_tokens.png",
        "roc.png",
        "results.jsonl",
    ):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["meta"]["items_done"] == 6
    assert {r["attack"] for r in report["attacks"]} == {i.attack for i in items if i.harmful}
    for row in report["attacks"]:
        assert 0.0 <= row["asr_guarded"] <= 1.0 and 0.0 <= row["asr_unguarded"] <= 1.0
    assert report["judge"]["name"] == "refusal-string-match-v1"
    assert 0.0 <= report["prompt_level"]["auroc"] <= 1.0
    records = result.records
    prefill = [r for r in records if r["suite"] == "prefill"]
    lengths = sorted(r["prefill_len"] for r in prefill)
    assert lengths == [5, 10, 20, 40]
    texts = sorted((r["prefill"] for r in prefill), key=len)
    assert all(longer.startswith(shorter) for shorter, longer in itertools.pairwise(texts))
    for r in records:  # same seed and settings on both sides; guarded never generates more
        assert r["guarded"]["generated_tokens"] <= r["unguarded"]["generated_tokens"]
        if not r["guarded"]["intercepted"]:
            assert r["guarded"]["text"] == r["unguarded"]["text"]
    markdown = (tmp_path / "report.md").read_text()
    assert "refusal-string-match-v1" in markdown and "![prompt-level ROC](roc.png)" in markdown
