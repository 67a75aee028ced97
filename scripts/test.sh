#!/usr/bin/env bash
# Fresh machine to a full test run: builds .venv with dev extras, then lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh dev   # idempotent: a no-op when everything is installed
bash scripts/install_browser.sh || echo "could not install Chromium: the chat page browser test will skip" >&2
.venv/bin/ruff check guardrail tests integrations benchmarks examples
.venv/bin/mypy guardrail
.venv/bin/mypy integrations/langchain/langchain_guardrail
# The suite runs a sidecar process beside the test process; one intra-op thread each avoids
# the thread oversubscription that makes both crawl on a 2-core machine.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# API fuzzing against a real sidecar on loopback: no 5xx, no schema violations.
.venv/bin/python benchmarks/fuzz.py --quick --json
exec .venv/bin/python -m pytest -q "$@"
