"""Extraction quality: token-level F1 of extract_main_text vs trafilatura vs naive get_text, same run.

    python benchmarks/extraction_quality.py [--show PAGE_ID]

The labelled set is benchmarks/data/extraction/: each item is `<id>.html` (the raw bytes as served,
original encoding kept) and `<id>.txt` (the hand-checked main text, UTF-8), listed in items.json
with its language and group: `demo` (the demo site's pages; gold = the v_news_content div),
`dev` (hand-written pages extract.py may be tuned on) and `test` (hand-written pages held out from
tuning). Tokens are characters for CJK text and lower-cased words/numbers otherwise; punctuation is
ignored. F1 is per page, averaged per group and language. The gold excludes the article title, so
extract_main_text, which puts the title first, pays a small precision cost for it.
Prints a table and writes benchmarks/_out/extraction_quality.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data" / "extraction"
OUT = ROOT / "benchmarks" / "_out"
sys.path.insert(0, str(ROOT))

# One token per CJK character (Han, kana, hangul); runs of Latin letters/digits otherwise.
_TOKEN = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]|[0-9a-z\u00c0-\u024f]+"
)
GROUPS = ("demo", "dev", "test")
LANGS = ("zh", "en")


@dataclass(frozen=True)
class Item:
    """One labelled page: raw HTML bytes and its gold main text."""

    id: str
    lang: str
    group: str
    url: str
    html: bytes
    gold: str


def tokenize(text: str) -> list[str]:
    """Characters for CJK, lower-cased words and numbers for everything else."""
    return _TOKEN.findall(text.lower())


def token_f1(predicted: str, gold: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the bag of tokens of `predicted` against `gold`."""
    pred, ref = Counter(tokenize(predicted)), Counter(tokenize(gold))
    overlap = sum((pred & ref).values())
    if not pred or not ref:
        return (float(not pred and not ref),) * 3
    precision, recall = overlap / sum(pred.values()), overlap / sum(ref.values())
    f1 = 2 * precision * recall / (precision + recall) if overlap else 0.0
    return precision, recall, f1


def load_items(folder: Path = DATA) -> list[Item]:
    """The labelled set listed in items.json."""
    entries = json.loads((folder / "items.json").read_text(encoding="utf-8"))
    return [
        Item(
            id=e["id"],
            lang=e["lang"],
            group=e["group"],
            url=e["url"],
            html=(folder / f"{e['id']}.html").read_bytes(),
            gold=(folder / f"{e['id']}.txt").read_text(encoding="utf-8"),
        )
        for e in entries
    ]


def run_ours(html: bytes, url: str) -> str:
    from blocks.extract import extract_main_text

    return extract_main_text(html, url)


def run_trafilatura(html: bytes, url: str) -> str:
    import trafilatura

    return trafilatura.extract(html) or ""


def run_trafilatura_recall(html: bytes, url: str) -> str:
    import trafilatura

    return trafilatura.extract(html, favor_recall=True) or ""


def run_get_text(html: bytes, url: str) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript"]):
        tag.decompose()
    return soup.get_text("\n")


SYSTEMS: dict[str, Callable[[bytes, str], str]] = {
    "extract_main_text": run_ours,
    "trafilatura": run_trafilatura,
    "trafilatura(favor_recall)": run_trafilatura_recall,
    "bs4 get_text": run_get_text,
}


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def evaluate(items: list[Item]) -> dict:
    """Per-page scores of every system and their means per group/language."""
    pages: list[dict] = []
    seconds: dict[str, float] = {}
    for name, system in SYSTEMS.items():
        start = time.perf_counter()
        for item in items:
            p, r, f = token_f1(system(item.html, item.url), item.gold)
            pages.append({"system": name, "id": item.id, "lang": item.lang, "group": item.group,
                          "precision": round(p, 4), "recall": round(r, 4), "f1": round(f, 4)})  # fmt: skip
        seconds[name] = round(time.perf_counter() - start, 3)
    summary: dict[str, dict[str, float | None]] = {}
    for name in SYSTEMS:
        rows = [p for p in pages if p["system"] == name]
        cells: dict[str, float | None] = {}
        for group in (*GROUPS, "all"):
            for lang in LANGS:
                scores = [p["f1"] for p in rows if p["lang"] == lang and group in ("all", p["group"])]
                cells[f"{group}/{lang}"] = mean(scores)
        summary[name] = cells
    counts = {f"{g}/{lang}": sum(1 for i in items if i.lang == lang and g in ("all", i.group))
              for g in (*GROUPS, "all") for lang in LANGS}  # fmt: skip
    return {"summary_f1": summary, "pages_per_cell": counts, "seconds": seconds, "pages": pages}


def print_table(result: dict) -> None:
    """Mean F1 per system (rows) and group/language (columns)."""
    columns = list(result["pages_per_cell"])
    head = f"{'system':<27}" + "".join(f"{c:>10}" for c in columns)
    print(head)
    print(f"{'(pages)':<27}" + "".join(f"{result['pages_per_cell'][c]:>10}" for c in columns))
    for name, cells in result["summary_f1"].items():
        row = "".join(f"{cells[c]:>10.3f}" if cells[c] is not None else f"{'-':>10}" for c in columns)
        print(f"{name:<27}{row}")


def main(argv: list[str] | None = None) -> int:
    """Score every system on the labelled set; print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", metavar="PAGE_ID", help="also print each system's output for one page")
    args = parser.parse_args(argv)
    items = load_items()
    if args.show:
        item = next((i for i in items if i.id == args.show), None)
        if item is None:
            parser.error(f"no page {args.show!r} in {DATA / 'items.json'}")
        for name, system in SYSTEMS.items():
            text = system(item.html, item.url)
            print(f"===== {name}  F1={token_f1(text, item.gold)[2]:.3f}\n{text}\n")
        return 0
    result = evaluate(items)
    print_table(result)
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "extraction_quality.json.tmp"
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(OUT / "extraction_quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
