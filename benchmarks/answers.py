"""Does the bot answer a student's reworded question with the right fact and the right link?

Runs the user's path through the CLIs, with their defaults, on a small English campus site served on
loopback (benchmarks/data/answers/<site>/: pages, the training pairs a user would write, and
hand-reworded questions that are never trained on):
crawl -> qa.jsonl (the site's pairs) -> blocks.dataset --split 1:0:0 -> blocks.config new cpu-demo ->
blocks.training start --follow -> finetune.evaluate --questions (base, tuned, base+retrieval,
tuned+retrieval). Prints wall time per stage and the scores. With --baseline the same run also
trains on the plain pairs (no rewordings, no retrieval records) with the same config, for comparison.

    .venv/bin/python benchmarks/answers.py --site dev
    .venv/bin/python benchmarks/answers.py --site holdout --baseline
    .venv/bin/python benchmarks/answers.py --site dev --questions benchmarks/data/answers/dev/reworded.jsonl
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "benchmarks" / "data" / "answers"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def serve_folder(folder: Path) -> tuple[ThreadingHTTPServer, str]:
    handler = functools.partial(QuietHandler, directory=str(folder))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def run(cmd: list[str], env: dict, label: str, timings: dict) -> str:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    timings[label] = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"{label} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train_and_evaluate(py, project, env, site_url, questions, dataset_args, tag, timings, modes) -> dict:
    run(
        [py, "-m", "blocks.dataset", "--project", project, "--split", "1:0:0", *dataset_args],
        env,
        f"{tag} dataset",
        timings,
    )
    stats = json.loads((Path(env["UMTCDS_DATA_DIR"]) / project / "dataset" / "stats.json").read_text())
    cfg_name = f"bench-{project}-{tag}"
    run(
        [py, "-m", "blocks.config", "new", "cpu-demo", "--project", project, "--name", cfg_name],
        env,
        f"{tag} config",
        timings,
    )
    cfg = REPO / "configs" / f"{cfg_name}.yaml"  # where blocks.config new saves it
    out = run(
        [
            py,
            "-m",
            "blocks.training",
            "start",
            "--project",
            project,
            "--config",
            str(cfg),
            "--run-id",
            tag,
            "--follow",
        ],
        env,
        f"{tag} training",
        timings,
    )
    run_dir = Path(env["UMTCDS_DATA_DIR"]) / project / "runs" / tag
    losses = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines() if '"log"' in x]
    out = run(
        [
            py,
            "-m",
            "finetune.evaluate",
            str(run_dir),
            "--questions",
            str(questions),
            "--project",
            project,
            "--site",
            site_url,
            "--modes",
            modes,
        ],
        env,
        f"{tag} evaluate",
        timings,
    )
    cfg.unlink(missing_ok=True)
    result = json.loads((run_dir / "eval" / "reworded.json").read_text())
    return {
        "records": stats["splits"]["train"]["records"],
        "final_loss": losses[-1]["loss"] if losses else None,
        "steps": losses[-1]["step"] if losses else None,
        "summary": result["summary"],
        "rows": result["rows"],
        "table": out,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--site", default="dev", help="folder under benchmarks/data/answers (dev, holdout)")
    parser.add_argument("--questions", type=Path, default=None, help="default: <site>/reworded.jsonl")
    parser.add_argument("--baseline", action="store_true", help="also train on the plain pairs, same config")
    parser.add_argument("--keep", action="store_true", help="keep the workspace (printed) for inspection")
    parser.add_argument("--show", action="store_true", help="print every reply")
    parser.add_argument(
        "--modes",
        default="base,tuned,base+retrieval,tuned+retrieval",
        help="evaluation modes (comma-separated; base and base+retrieval do not depend on training)",
    )
    args = parser.parse_args()
    site_dir = DATA / args.site
    questions = args.questions or site_dir / "reworded.jsonl"
    py = (
        str(REPO / ".venv" / "bin" / "python")
        if (REPO / ".venv" / "bin" / "python").exists()
        else sys.executable
    )
    workspace = Path(tempfile.mkdtemp(prefix="umtcds-answers-"))
    env = {**os.environ, "UMTCDS_DATA_DIR": str(workspace), "PYTHONUNBUFFERED": "1"}
    project = f"answers-{args.site}"
    timings: dict[str, float] = {}
    server, site_url = serve_folder(site_dir / "site")
    try:
        run(
            [
                py,
                "-m",
                "blocks.crawl",
                f"{site_url}/index.htm",
                "--out",
                str(workspace / project / "crawl"),
                "--delay",
                "0",
            ],
            env,
            "crawl",
            timings,
        )
        qa = (site_dir / "qa.jsonl").read_text(encoding="utf-8").replace("http://SITE", site_url)
        (workspace / project / "qa").mkdir(parents=True, exist_ok=True)
        (workspace / project / "qa" / "qa.jsonl").write_text(qa, encoding="utf-8")
        results = {
            "ours": train_and_evaluate(py, project, env, site_url, questions, [], "ours", timings, args.modes)
        }
        if args.baseline:
            results["plain"] = train_and_evaluate(
                py,
                project,
                env,
                site_url,
                questions,
                ["--rewordings", "0", "--no-retrieval"],
                "plain",
                timings,
                args.modes,
            )
    finally:
        server.shutdown()
        if not args.keep:
            shutil.rmtree(workspace, ignore_errors=True)
    print(f"site {args.site}: {len(qa.splitlines())} training pairs, questions {questions}")
    print("wall time per stage (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    for tag, r in results.items():
        print(f"\n== {tag}: {r['records']} train records, {r['steps']} steps, final loss {r['final_loss']}")
        print(r["table"].strip())
        if args.show:
            for row in r["rows"]:
                print(f"- {row['question']}  facts {row['key_facts']}")
                for mode in ("tuned", "tuned+retrieval", "base+retrieval"):
                    if mode in row:
                        print(
                            f"    {mode}: {'OK ' if row[mode]['facts'] else 'no '}{row[mode]['reply'][:160]!r}"
                        )
    if args.keep:
        print(f"workspace kept: {workspace}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
