"""The GPU benchmark scripts run end to end in their CPU smoke modes, so a device call never dies on a typo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_train_throughput_tiny_runs_the_seed_and_the_project_trainer(tmp_path):
    out = tmp_path / "out"
    args = [sys.executable, "benchmarks/train_throughput.py", "--tiny", "--out", str(out), "--steps", "2",
            "--only", "seed,plain-ptuning,lora,ptuning-ckpt32", "--profile"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = {r["recipe"].split(":")[0]: r for r in json.loads((out / "train_throughput.json").read_text())}
    assert set(results) == {"seed", "plain PEFT P-tuning 8 vt, 1 x 41 x accum 4", "lora", "ptuning-ckpt32"}
    for name in ("lora", "ptuning-ckpt32"):  # the trainer finished and its steps were timed
        assert results[name]["end"]["status"] == "done", results[name]
        assert results[name]["tokens_per_s"] > 0
    assert (
        results["seed"]["tokens_per_s"] > 0
        and results["plain PEFT P-tuning 8 vt, 1 x 41 x accum 4"]["tokens_per_s"] > 0
    )
    assert "MFU %" in proc.stdout
    assert proc.stdout.count("where one step's time went") == 2  # each project plan's profiled step


def test_generate_throughput_compares_batched_and_static_with_one_at_a_time():
    args = [sys.executable, "benchmarks/generate_throughput.py", "--batch", "2", "--new-tokens", "4",
            "--static", "--hf-static", "--threads", "1"]  # fmt: skip
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((ROOT / "benchmarks" / "_out" / "generate_throughput.json").read_text())
    assert [r["mode"] for r in result["rows"]] == [
        "one at a time",
        "batch 2",
        "batch 2 static (ours)",
        "batch 2 static (transformers)",
    ]
    assert all(r["tokens_per_s"] > 0 for r in result["rows"])
