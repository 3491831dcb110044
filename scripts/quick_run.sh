#!/usr/bin/env bash
# One command for a new user: install everything (first time only), prepare the embedded
# model, and start the app. Extra arguments go to app.py, e.g. --host 0.0.0.0 --auth admin:S3cretPass
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python app.py "$@"
