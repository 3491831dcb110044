"""Per-tick cost of following progress.jsonl: incremental read_progress vs re-reading the whole file."""
import json, sys, time, tempfile
from pathlib import Path
sys.path.insert(0, "/work/main")
import blocks.training as tr

def make(run, n):
    with open(run / "progress.jsonl", "w") as fh:
        fh.write(json.dumps({"event": "start", "total_steps": n, "time": 0}) + "\n")
        for s in range(1, n + 1):
            fh.write(json.dumps({"event": "log", "step": s, "loss": 1.0 / s, "learning_rate": 1e-4, "epoch": s / n, "time": s}) + "\n")

rows = []
for n in (1_000, 10_000, 100_000):
    run = Path(tempfile.mkdtemp())
    make(run, n)
    _, off = tr.read_progress(run, 0)
    reps = 20
    # one new log line per tick, as during training
    t_inc = t_full = 0.0
    for i in range(reps):
        with open(run / "progress.jsonl", "a") as fh:
            fh.write(json.dumps({"event": "log", "step": n + i + 1, "loss": 0.1, "time": n + i}) + "\n")
        t0 = time.perf_counter(); ev, off = tr.read_progress(run, off); t_inc += time.perf_counter() - t0
        t0 = time.perf_counter(); tr.read_progress(run, 0); t_full += time.perf_counter() - t0
    rows.append({"events": n, "incremental_ms": 1000 * t_inc / reps, "full_reread_ms": 1000 * t_full / reps})
print(f"{'events':>8} {'incremental ms':>15} {'full re-read ms':>16}")
for r in rows:
    print(f"{r['events']:>8} {r['incremental_ms']:>15.3f} {r['full_reread_ms']:>16.2f}")
Path("/tmp/bench/poll_bench.json").write_text(json.dumps(rows, indent=1))
