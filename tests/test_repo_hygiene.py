"""The repository speaks of the product only: no file names a path on one machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Home folders and workspaces of one machine; a report or doc that names one leaks it.
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:root|home/[\w.-]+|work|Users/[\w.-]+|tmp/[\w.-]+)/")
BINARY = {".png", ".safetensors", ".gguf", ".ico", ".jpg", ".woff2"}


def _tracked() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in out.stdout.splitlines() if Path(line).suffix not in BINARY]


def test_no_machine_paths_in_tracked_files() -> None:
    leaks = []
    for path in _tracked():
        if not path.is_file() or path.name == Path(__file__).name:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        leaks += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in MACHINE_PATH.finditer(text)]
    assert not leaks, "machine paths in tracked files:\n" + "\n".join(leaks[:20])


def test_the_pattern_catches_a_machine_path() -> None:
    assert MACHINE_PATH.search('"directory": "/work/wt-x/guardrail/heads"')
    assert MACHINE_PATH.search("see /home/alice/runs")
    assert not MACHINE_PATH.search("GET /v1/check and guardrail/heads/smollm2-135m")
