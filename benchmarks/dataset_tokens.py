"""Token-length stats for the Dataset stage: one batched tokenizer call vs per-record apply_chat_template.

    python benchmarks/dataset_tokens.py [--records 4000] [--model models/smollm2-135m-instruct]

Baseline (same run): what a straightforward implementation does, two apply_chat_template(tokenize=True)
calls per record. Prints a table and writes benchmarks/_out/dataset_tokens.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blocks import dataset as ds  # noqa: E402
from blocks.models import default_model_path  # noqa: E402


def make_records(n: int) -> list[dict]:
    options = ds.DatasetOptions(system_prompt="你是东湖大学的智能助手。")
    pairs = [
        ds.QAPair(
            f"第{i}个问题：图书馆借阅区在第{i % 7}周的开放时间是什么？",
            f"借阅区每天7:30-22:30开放，第{i}条。" * (1 + i % 5),
        )
        for i in range(n)
    ]
    return [ds.build_record(p, "g", options) for p in pairs]


def per_record(records: list[dict], tokenizer) -> list[tuple[int, int]]:
    out = []
    for r in records:
        prompt = tokenizer.apply_chat_template(r["messages"][:-1], tokenize=True, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(r["messages"], tokenize=True)
        out.append((len(prompt), len(full) - len(prompt)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "_out" / "dataset_tokens.json")
    args = parser.parse_args()
    tokenizer = ds.load_tokenizer(args.model)
    records = make_records(args.records)
    ds.measure_tokens(records[:50], tokenizer)  # warm-up (template compilation)
    rows = []
    for name, fn in (
        ("per-record apply_chat_template (baseline)", per_record),
        ("batched measure_tokens", ds.measure_tokens),
    ):
        start = time.perf_counter()
        lengths = fn(records, tokenizer)
        seconds = time.perf_counter() - start
        rows.append(
            {"method": name, "seconds": round(seconds, 3), "records_per_s": round(len(records) / seconds)}
        )
        total = sum(p + a for p, a in lengths)
        rows[-1]["total_tokens"] = total
    print(f"{args.records} records, tokenizer {args.model}")
    print(f"{'method':45} {'seconds':>8} {'records/s':>10} {'tokens':>9}")
    for r in rows:
        print(f"{r['method']:45} {r['seconds']:8.3f} {r['records_per_s']:10d} {r['total_tokens']:9d}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"records": args.records, "model": args.model, "rows": rows}, indent=2) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
