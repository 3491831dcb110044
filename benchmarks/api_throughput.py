"""API throughput: 200 chunks against the fake server at 300 ms, concurrency 8 vs sequential (the seed).

Also runs concurrency 8 with 20% of requests answered 429 (Retry-After: 1) and checks every item completes.
Both SDK paths are real: the OpenAI SDK over loopback HTTP to tests/fake_llm_server.py.

    .venv/bin/python benchmarks/api_throughput.py                 # ~75 s
    .venv/bin/python benchmarks/api_throughput.py --items 50      # quicker
Writes benchmarks/_out/api_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_llm_server import FakeLLMServer  # noqa: E402

from blocks.llm import LLMError, OpenAIClient, Request, RetryPolicy, run_requests  # noqa: E402


def measure(items: int, concurrency: int, latency: float, rate_429: float) -> dict:
    """Run `items` requests and return wall time, throughput and how many completed."""
    with FakeLLMServer(latency=latency, rate_429=rate_429, retry_after="1", seed=1) as server:
        client = OpenAIClient(server.url, "fake")
        requests = [Request([{"role": "user", "content": f"chunk {i}"}], 64) for i in range(items)]
        start = time.perf_counter()
        results = dict(run_requests(client, requests, concurrency, RetryPolicy(max_attempts=10)))
        wall = time.perf_counter() - start
        n_429 = sum(r["fault"] == "429" for r in server.requests)
    ok = sum(not isinstance(r, LLMError) and r == f"chunk {i}" for i, r in results.items())
    return {
        "concurrency": concurrency,
        "rate_429": rate_429,
        "items": items,
        "completed": ok,
        "answered_429": n_429,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.3)
    args = parser.parse_args()
    rows = [
        measure(args.items, 1, args.latency, 0.0),
        measure(args.items, 8, args.latency, 0.0),
        measure(args.items, 8, args.latency, 0.2),
    ]
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]
    print(f"{'concurrency':>11} {'429 rate':>8} {'completed':>9} {'429s':>5} {'wall s':>7} {'items/s':>8}")
    for r in rows:
        print(
            f"{r['concurrency']:>11} {r['rate_429']:>8.0%} {r['completed']:>6}/{r['items']:<3}"
            f"{r['answered_429']:>5} {r['wall_s']:>7.1f} {r['items_per_s']:>8.1f}"
        )
    print(f"speedup concurrency 8 vs sequential: {speedup:.1f}x (goal >= 6x)")
    out = ROOT / "benchmarks" / "_out" / "api_throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"latency_s": args.latency, "rows": rows, "speedup": round(speedup, 2)}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
