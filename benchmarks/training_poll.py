"""Per-tick cost of following progress.jsonl: incremental read_progress vs re-reading the whole file.

    .venv/bin/python benchmarks/training_poll.py

The Training tab polls every 2 s; the baseline re-reads the whole file each tick (as the seed re-scanned
its checkpoint folders). Writes benchmarks/_out/training_poll.json.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import blocks.training as tr  # noqa: E402


def write_events(run: Path, n: int) -> None:
    """A progress.jsonl with a start event and n log events."""
    with open(run / "progress.jsonl", "w") as fh:
        fh.write(json.dumps({"event": "start", "total_steps": n, "time": 0}) + "\n")
        for s in range(1, n + 1):
            event = {
                "event": "log",
                "step": s,
                "loss": 1.0 / s,
                "learning_rate": 1e-4,
                "epoch": s / n,
                "time": s,
            }
            fh.write(json.dumps(event) + "\n")


def main() -> None:
    rows = []
    for n in (1_000, 10_000, 100_000):
        run = Path(tempfile.mkdtemp())
        write_events(run, n)
        _, offset = tr.read_progress(run, 0)
        reps = 20
        t_inc = t_full = 0.0
        for i in range(reps):  # one new log line per tick, as during training
            with open(run / "progress.jsonl", "a") as fh:
                fh.write(json.dumps({"event": "log", "step": n + i + 1, "loss": 0.1, "time": n + i}) + "\n")
            t0 = time.perf_counter()
            _, offset = tr.read_progress(run, offset)
            t_inc += time.perf_counter() - t0
            t0 = time.perf_counter()
            tr.read_progress(run, 0)
            t_full += time.perf_counter() - t0
        rows.append(
            {"events": n, "incremental_ms": 1000 * t_inc / reps, "full_reread_ms": 1000 * t_full / reps}
        )
    print(f"{'events':>8} {'incremental ms':>15} {'full re-read ms':>16}")
    for r in rows:
        print(f"{r['events']:>8} {r['incremental_ms']:>15.3f} {r['full_reread_ms']:>16.2f}")
    out = ROOT / "benchmarks" / "_out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "training_poll.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
