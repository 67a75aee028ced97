#!/usr/bin/env bash
# Fresh machine to a running demo: builds .venv, then runs the embedded quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] && .venv/bin/python -c "import guardrail, transformers" 2>/dev/null || bash scripts/bootstrap.sh runtime
exec .venv/bin/python examples/quickstart.py "$@"
