"""Run a stage's command line the way a user does and check that a refusal reads well."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root, text output captured."""
    full_env = dict(os.environ)
    full_env.pop("UMTCDS_AUTH", None)  # a login in the developer's shell must not change the outcome
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit code 2, every word on stderr, and no traceback anywhere."""
    shown = f"exit {proc.returncode}\nstdout: {proc.stdout[-800:]}\nstderr: {proc.stderr[-1500:]}"
    assert proc.returncode == 2, shown
    for word in words:
        assert word.lower() in proc.stderr.lower(), f"{word!r} not in stderr\n{shown}"
    assert "Traceback" not in proc.stderr + proc.stdout, shown


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to prove a failed rerun changed nothing)."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
