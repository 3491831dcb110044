"""Time from process start to the app answering HTTP, next to the floor set by gradio itself.

    .venv/bin/python benchmarks/startup.py [--repeat 3]

Rows: `import gradio` alone; a one-textbox gr.Blocks app; UMTCDS `app.py` (eight tabs).
Writes benchmarks/_out/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from browser import free_port  # noqa: E402

HELLO = (
    "import gradio as gr, sys\n"
    "with gr.Blocks() as d:\n"
    "    gr.Textbox()\n"
    "d.launch(server_port=int(sys.argv[1]), quiet=True)\n"
)


def time_to_http(cmd: list[str], port: int, env: dict) -> float:
    """Seconds from spawning `cmd` until http://127.0.0.1:port answers."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited early with {proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1):
                    return time.perf_counter() - start
            except OSError:
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def time_import_gradio() -> float:
    """Seconds for a fresh interpreter to import gradio and exit."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import gradio"], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp()) / "data"
    data.mkdir()
    env = {**os.environ, "UMTCDS_DATA_DIR": str(data)}
    rows: dict[str, list[float]] = {
        "import gradio": [],
        "hello gr.Blocks -> HTTP": [],
        "UMTCDS app.py -> HTTP": [],
    }
    for _ in range(args.repeat):
        rows["import gradio"].append(time_import_gradio())
        port = free_port()
        rows["hello gr.Blocks -> HTTP"].append(
            time_to_http([sys.executable, "-c", HELLO, str(port)], port, env)
        )
        port = free_port()
        rows["UMTCDS app.py -> HTTP"].append(
            time_to_http([sys.executable, "app.py", "--port", str(port)], port, env)
        )
    result = {name: {"median_s": statistics.median(v), "runs": v} for name, v in rows.items()}
    print(f"{'what':28} {'median s':>9}   runs")
    for name, r in result.items():
        print(f"{name:28} {r['median_s']:9.2f}   {', '.join(f'{x:.2f}' for x in r['runs'])}")
    out = ROOT / "benchmarks" / "_out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps({"cpus": os.cpu_count(), **result}, indent=2))


if __name__ == "__main__":
    main()
