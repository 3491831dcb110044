"""The offline beginner path, timed: demo site -> one-click pipeline (embedded model, CPU) -> the bot's answers.

Starts the demo site on loopback, runs `python -m blocks.pipeline URL --project P` exactly as a user
would (no network, no GPU, the defaults), prints the wall time of each stage from the pipeline's own
output, then scores the chatbot on the demo site's hand-reworded questions
(benchmarks/data/answers/demo_reworded.jsonl, never trained on) with `finetune.evaluate --questions`:
English questions (the embedded model is English-only) and Chinese questions (retrieval: does the
right page come back and get cited), each in the modes tuned and tuned + retrieval.

    .venv/bin/python benchmarks/offline_path.py
    .venv/bin/python benchmarks/offline_path.py --keep        # keep the workspace to inspect
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
QUESTIONS = REPO / "benchmarks" / "data" / "answers" / "demo_reworded.jsonl"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    from blocks.demo_site import start_demo_site

    py = (
        str(REPO / ".venv" / "bin" / "python")
        if (REPO / ".venv" / "bin" / "python").exists()
        else sys.executable
    )
    workspace = Path(tempfile.mkdtemp(prefix="umtcds-offline-"))
    env = {**os.environ, "UMTCDS_DATA_DIR": str(workspace), "PYTHONUNBUFFERED": "1"}
    with start_demo_site() as site:
        started = time.monotonic()
        proc = subprocess.run(
            [py, "-m", "blocks.pipeline", f"{site.url}/index.htm", "--project", "offline"],
            cwd=REPO, env=env, capture_output=True, text=True,
        )  # fmt: skip
        total = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        # The pipeline prints "[  12 s] stage: message" updates; a stage ends where the next begins.
        marks = re.findall(r"\[\s*(\d+) s\] (\w+):", proc.stdout)
        first_seen: dict[str, int] = {}
        for seconds, stage in marks:
            first_seen.setdefault(stage, int(seconds))
        order = list(first_seen)
        per_stage = {
            s: (first_seen[order[i + 1]] if i + 1 < len(order) else total) - first_seen[s]
            for i, s in enumerate(order)
        }
        lines = [ln for ln in proc.stdout.replace("\r", "\n").splitlines() if ln.strip()]
        run_dir = next((workspace / "offline" / "runs").iterdir())
        questions = [json.loads(x) for x in QUESTIONS.read_text(encoding="utf-8").splitlines() if x.strip()]
        english = [q for q in questions if not re.search(r"[\u4e00-\u9fff]", q["question"])]
        chinese = [q for q in questions if q not in english]
        results = {}
        for name, subset in (("English", english), ("Chinese", chinese)):
            qfile = workspace / f"{name}.jsonl"
            qfile.write_text(
                "".join(json.dumps(q, ensure_ascii=False) + "\n" for q in subset), encoding="utf-8"
            )
            ev = subprocess.run(
                [py, "-m", "finetune.evaluate", str(run_dir), "--questions", str(qfile), "--project", "offline",
                 "--site", site.url, "--modes", "tuned,tuned+retrieval"],
                cwd=REPO, env=env, capture_output=True, text=True,
            )  # fmt: skip
            results[name] = ev.stdout.strip() if ev.returncode == 0 else f"failed: {ev.stderr[-500:]}"
    stats = json.loads((workspace / "offline" / "dataset" / "stats.json").read_text())
    print(f"offline path on the demo site, {os.cpu_count()} CPUs, torch threads as the app sets them")
    print(
        f"total wall time {total:.0f} s; per stage (s): "
        + ", ".join(f"{s} {v:.0f}" for s, v in per_stage.items())
    )
    print("\n".join(lines[-8:]))
    print(f"dataset: {stats['kept']} pairs, train records by kind {stats['records_by_kind']['train']}")
    for name, table in results.items():
        print(
            f"\n== {name} reworded questions ({len(english) if name == 'English' else len(chinese)})\n{table}"
        )
    if args.keep:
        print(f"workspace kept: {workspace}")
    else:
        shutil.rmtree(workspace, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
