"""QA generation offline: the embedded model on the demo site, new defaults vs the old ones, same run.

    python benchmarks/qa_offline.py                       # whole site, new defaults; old defaults 120 s
    python benchmarks/qa_offline.py --only en --variants 2 --prompt-lang en --old-seconds 0
    python benchmarks/qa_offline.py --batch-size 8 --threads 2

Serves the demo site on loopback, crawls it (blocks.crawl) into a temporary project, runs
blocks.qa.generate_qa with the embedded SmolLM2 and prints, per page, the pairs written, the share
whose answer is supported by its page (is_grounded against the whole page text, and verbatim), the
drop reasons, the wall time and the model's tokens/s. Then the old defaults (passage method: the
JSON prompt in Chinese, 800-token chunks, 1024 new tokens) run on the English pages until
--old-seconds have passed; Stop ends them between tokens and what they made by then is printed.
Writes benchmarks/_out/qa_offline.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "_out"


def crawl_demo_site(data_dir: Path, project_name: str) -> None:
    """Crawl the demo site (loopback) into data_dir/<project>/crawl with blocks.crawl's CLI code path."""
    from blocks import crawl
    from blocks.demo_site import start_demo_site

    with start_demo_site() as site:
        out = data_dir / project_name / "crawl"
        code = crawl.main([site.url + "/index.htm", "--out", str(out), "--delay", "0"])
        if code not in (0, None):
            raise SystemExit(f"crawl failed with exit code {code}")


def keep_pages(project, lang: str) -> None:
    """Leave only the pages of one language ('en'/'zh') in the crawl manifest."""
    from blocks.clean import read_jsonl
    from blocks.qa import fact_lang

    manifest = project.crawl_dir / "pages.jsonl"
    rows = read_jsonl(manifest)
    kept = [r for r in rows if fact_lang((project.crawl_dir / r["text_file"]).read_text()) == lang]
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")


def page_rows(project) -> list[dict]:
    """Per page: pairs, grounded share, drops, from qa/qa.jsonl and qa/state.jsonl."""
    from blocks.clean import read_jsonl, read_pages, read_state
    from blocks.qa import fact_lang, is_grounded

    pairs = read_jsonl(project.qa_file)
    state = read_state(project.qa_dir / "state.jsonl")
    rows = []
    for page in read_pages(project.crawl_dir):
        text = (project.crawl_dir / page.text_file).read_text(encoding="utf-8")
        mine = [p for p in pairs if p["source_url"] == page.url]
        originals = [p for p in mine if not p.get("variant_of")]
        rows.append(
            {
                "page": page.url.split("/", 3)[-1],
                "lang": fact_lang(text),
                "pairs": len(originals),
                "variants": len(mine) - len(originals),
                "grounded": sum(is_grounded(p["answer"], text) for p in mine),
                "verbatim": sum(p["answer"] in text for p in mine),
                "status": state.get(page.id, {}).get("status", "-"),
                "drops": state.get(page.id, {}).get("drops", {}),
                "examples": [(p["question"], p["answer"]) for p in mine],
            }
        )
    return rows


def run_qa(project, client, settings, seconds: float | None = None) -> dict:
    """Run generate_qa to the end (or Stop after `seconds`); wall time and the final report's numbers."""
    from blocks.qa import generate_qa

    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set) if seconds else None
    start = time.monotonic()
    if timer:
        timer.start()
    report = None
    try:
        for report in generate_qa(project, client, settings, stop=stop):
            line = report.progress_line()
            print(
                f"\r  {report.processed}/{report.total} pages {line}    ", end="", file=sys.stderr, flush=True
            )
    finally:
        if timer:
            timer.cancel()
    print(file=sys.stderr)
    wall = time.monotonic() - start
    return {
        "wall_s": round(wall, 1),
        "stopped": report.stopped,
        "summary": report.summary(),
        "tokens": report.new_tokens,
        "tokens_per_s": round(report.tokens_per_s or 0.0, 1),
        "requests": report.requests_done,
    }


def print_rows(rows: list[dict]) -> None:
    print(f"{'page':55} {'lang':4} {'pairs':>5} {'var':>4} {'grnd':>5} {'verb':>5}  status  drops")
    for r in rows:
        drops = ", ".join(f"{k} {v}" for k, v in sorted(r["drops"].items()))
        print(
            f"{r['page'][:55]:55} {r['lang']:4} {r['pairs']:5d} {r['variants']:4d} {r['grounded']:5d} "
            f"{r['verbatim']:5d}  {r['status']:6}  {drops}"
        )
    for r in rows:
        for q, a in r["examples"][:3]:
            print(f"  [{r['page'][:30]}] {q}  =>  {a[:100]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["all", "en", "zh"], default="all", help="pages of one language")
    parser.add_argument("--variants", type=int, default=None, help="paraphrases per question (default: auto)")
    parser.add_argument(
        "--prompt-lang", choices=["zh", "en"], default="zh", help="passage/paraphrase prompts"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = LocalClient's default)")
    parser.add_argument("--old-seconds", type=float, default=120.0, help="time given to the old defaults")
    args = parser.parse_args(argv)

    from blocks import workspace
    from blocks.llm import LocalClient, unload_local_models
    from blocks.models import prepare_default_model
    from blocks.qa import QASettings

    model_dir = prepare_default_model()
    result = {"batch_size": args.batch_size, "only": args.only}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        workspace.DATA_DIR = data
        crawl_demo_site(data, "new")
        crawl_demo_site(data, "old")
        new, old = workspace.get_project("new"), workspace.get_project("old")
        if args.only != "all":
            keep_pages(new, args.only)
        keep_pages(old, "en")
        client = LocalClient(str(model_dir), batch_size=args.batch_size, threads=args.threads)
        result["threads"] = client.threads
        t = time.monotonic()
        client.count_tokens("warm up")  # load the model outside the timed runs
        result["load_s"] = round(time.monotonic() - t, 1)

        print("new defaults (method auto -> sentence for the 135M model):")
        result["new"] = run_qa(new, client, QASettings(variants=args.variants, prompt_lang=args.prompt_lang))
        result["new"]["pages"] = rows = page_rows(new)
        print_rows(rows)
        en = [r for r in rows if r["lang"] == "en"]
        total = sum(r["pairs"] + r["variants"] for r in rows)
        print(
            f"new: {result['new']['wall_s']} s wall, {result['new']['tokens_per_s']} tok/s, "
            f"{total} pairs, grounded {sum(r['grounded'] for r in rows)}/{total}; English pages: "
            f"{[r['pairs'] for r in en]} pairs (min {min((r['pairs'] for r in en), default=0)})"
        )

        if args.old_seconds > 0:
            print(
                f"\nold defaults (passage, zh JSON prompt, 1024 new tokens), English pages, {args.old_seconds:.0f} s:"
            )
            old_settings = QASettings(method="passage", variants=0, new_tokens_per_question=1000)
            result["old"] = run_qa(old, client, old_settings, args.old_seconds)
            result["old"]["pages"] = rows = page_rows(old)
            print_rows(rows)
            print(
                f"old: {result['old']['wall_s']} s wall ({'stopped' if result['old']['stopped'] else 'finished'}),"
                f" {result['old']['tokens_per_s']} tok/s, {sum(r['pairs'] for r in rows)} pairs; "
                f"{result['old']['summary']}"
            )
        unload_local_models()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "qa_offline.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
