#!/usr/bin/env bash
# Install what the tests need and run the whole suite (slow and browser tests included),
# plus ruff. Extra arguments go to pytest, e.g. bash scripts/test.sh -m "not slow" -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev

# (no `grep -q` after a pipe: under pipefail its early exit would fail fc-list with SIGPIPE)
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! fc-list 2>/dev/null | grep -i "wenquanyi" >/dev/null; then
  echo "[test] installing Debian chromium for the browser tests"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium chromium-driver fonts-wqy-zenhei >/dev/null
fi

echo "[test] ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "[test] pytest"
exec .venv/bin/python -m pytest -q --timeout 900 "$@"
