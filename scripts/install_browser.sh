#!/usr/bin/env bash
# What the chat page's browser test needs: Debian's Chromium and chromedriver, and the Playwright
# Python client in .venv (driving /usr/bin/chromium; no browser download). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver
fi
py=.venv/bin/python
[ -x "$py" ] || { echo "no .venv: run scripts/bootstrap.sh first" >&2; exit 1; }
$py -c "import playwright.sync_api" 2>/dev/null || $py -m pip install -q "playwright>=1.40"
echo "chromium: $(command -v chromium); playwright: $($py -m pip show playwright 2>/dev/null | sed -n "s/^Version: //p")"
