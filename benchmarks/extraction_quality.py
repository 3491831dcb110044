"""Extraction quality: bag-of-tokens F1 and ms/page of extract_main_text beside trafilatura.

    python benchmarks/extraction_quality.py [--dev-set DIR] [--limit N] [--show PAGE_ID]

Main table: the development set of real pages in ../shared/extraction-dev (Chinese news and
institution pages; the English WCXB sample by page type), scored with that folder's own score.py
(CJK characters and words as tokens, macro mean over pages) and timed one page after another in
this process. Rows "half 0/1" split each language by page order (even/odd): a check that a gain is
not carried by a few pages. Without the folder (a CI checkout) the main table is skipped and says so.

Small table: benchmarks/data/extraction/ (items.json: the demo site's pages, `demo`, whose gold is
the v_news_content div, plus a few hand-written `dev`/`test` pages), with this file's tokenizer.
Prints both tables and writes benchmarks/_out/extraction_quality.json.
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
DEV_SET = ROOT.parent / "shared" / "extraction-dev"  # lives beside the repository, not in it
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


@dataclass(frozen=True)
class DevPage:
    """One page of the development set: raw bytes as served, gold text, language and WCXB page type."""

    id: str
    lang: str
    page_type: str
    half: int
    url: str | None
    html: bytes
    gold: str


def load_scorer(folder: Path):
    """The development set's own score.py (its tokenizer and bag F1 are the reviewers' metric)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("extraction_dev_score", folder / "score.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_dev_set(folder: Path = DEV_SET, limit: int | None = None) -> list[DevPage]:
    """The pages of <folder>/zh and <folder>/en, in file order (limit: the first N of each language)."""
    scorer = load_scorer(folder)
    pages: list[DevPage] = []
    for lang in ("zh", "en"):
        for index, doc in enumerate(scorer.load_pairs(str(folder / lang), limit)):
            meta_path = folder / lang / f"{doc.id}.meta.json"
            meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
            page_type = meta.get("page_type") or ("news/institution" if lang == "zh" else "other")
            pages.append(
                DevPage(doc.id, lang, page_type, index % 2, doc.url, doc.html_bytes(), doc.gold or "")
            )
    return pages


def run_trafilatura_default(html: bytes, url: str | None) -> str:
    """trafilatura with the settings of its own benchmark (and of score.py's `-e trafilatura`)."""
    import trafilatura

    return trafilatura.extract(html, url=url, include_comments=False, include_tables=True) or ""


def evaluate_dev_set(pages: list[DevPage], scorer) -> dict:
    """Per-page F1 and time of ours and trafilatura; means per language, half and page type."""
    from blocks.extract import extract_main_text

    systems = {"trafilatura": run_trafilatura_default, "ours": extract_main_text}
    for system in systems.values():  # imports and first-call set-up are not a page's time
        system(pages[0].html, pages[0].url)
    rows = []
    for page in pages:
        row = {"id": page.id, "lang": page.lang, "type": page.page_type, "half": page.half}
        for name, system in systems.items():
            start = time.perf_counter()
            text = system(page.html, page.url)
            row[f"ms_{name}"] = round(1000 * (time.perf_counter() - start), 2)
            row[f"f1_{name}"] = round(scorer.bag_prf(text, page.gold)[2], 4)
        rows.append(row)
    groups: dict[str, list[dict]] = {}
    for lang in ("zh", "en"):
        groups[lang] = [r for r in rows if r["lang"] == lang]
        for half in (0, 1):
            groups[f"{lang} half {half}"] = [r for r in groups[lang] if r["half"] == half]
    for page_type in sorted({r["type"] for r in rows if r["lang"] == "en"}):
        groups[f"en {page_type}"] = [r for r in rows if r["lang"] == "en" and r["type"] == page_type]
    table = {
        name: {
            "pages": len(sel),
            **{
                f"{k}_{s}": round(mean([r[f"{k}_{s}"] for r in sel]), 4)
                for k in ("f1", "ms")
                for s in systems
            },
        }  # fmt: skip
        for name, sel in groups.items()
        if sel
    }
    return {"table": table, "pages": rows}


def print_dev_table(result: dict) -> None:
    """One row per language, half and page type: F1 and ms/page, trafilatura beside ours."""
    print(f"{'dev set (bag F1)':<24}{'pages':>6}{'trafilatura':>13}{'ours':>8}{'traf ms':>10}{'ours ms':>10}")
    for name, cell in result["table"].items():
        mark = "" if cell["f1_ours"] >= cell["f1_trafilatura"] else "  < trafilatura"
        print(f"{name:<24}{cell['pages']:>6}{cell['f1_trafilatura']:>13.3f}{cell['f1_ours']:>8.3f}"
              f"{cell['ms_trafilatura']:>10.1f}{cell['ms_ours']:>10.1f}{mark}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Score ours and trafilatura on the development set and the demo pages; print and write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev-set", type=Path, default=DEV_SET, help=f"default {DEV_SET}")
    parser.add_argument("--limit", type=int, help="only the first N pages of each language of the dev set")
    parser.add_argument(
        "--show", metavar="PAGE_ID", help="print each system's output for one demo-table page"
    )
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
    result: dict = {}
    if (args.dev_set / "score.py").exists():
        dev = evaluate_dev_set(load_dev_set(args.dev_set, args.limit), load_scorer(args.dev_set))
        print_dev_table(dev)
        result["dev_set"] = {"folder": str(args.dev_set), **dev}
    else:
        print(f"dev set not found at {args.dev_set} (it lives beside the repository): main table skipped")
        result["dev_set"] = None
    print()
    small = evaluate(items)
    print_table(small)
    result["demo_and_handwritten"] = small
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = OUT / "extraction_quality.json.tmp"
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(OUT / "extraction_quality.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
