"""Retrieval index of a project's pages: short passages with their URL and title, searched with BM25.

Sources: each crawled page (its cleaned text where one exists, else the crawl text) split into
passages of a few paragraphs, plus every QA pair of qa/qa.jsonl as a short question-and-answer
passage citing its `source_url` (so a project built from imported pairs alone is searchable too).
Words are lower-cased and stemmed (Snowball), Chinese is segmented with jieba, and numbers are
compared without thousands separators ("1,200" = "1200"). A refresh re-splits only the sources
whose text changed; vanished pages drop out. Stored in data/<project>/index/passages.jsonl; the BM25
matrix (bm25s) is rebuilt from the stored tokens when the index is loaded (well under a second for
thousands of passages).

The prompt a model answers from, and the choice of passages its reply cites, live here too: chat,
serve, evaluation and retrieval-aware training (RAFT) use the same ones.

    python -m blocks.index --project demo                                   # build or refresh
    python -m blocks.index --project demo --query "When does the library open on Saturday?"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from blocks.workspace import Project, WorkspaceError, get_project

INDEX_VERSION = 2  # 2: "30k" read as 30000
PASSAGE_CHARS = 320  # a passage: a few paragraphs, short enough for a small model's context
CJK_PASSAGE_CHARS = 160
TOP_K = 3  # passages put in front of the model
WEAK_SUPPORT = 0.25  # below this share of a reply's tokens, no passage counts as its source
NOT_FOUND_EN = "The campus pages I have do not say."
NOT_FOUND_ZH = "我查到的校园网页中没有提到这一点。"

_CJK = "\u3400-\u9fff\uf900-\ufaff"
_CJK_RE = re.compile(f"[{_CJK}]")
_SEGMENT = re.compile(f"([{_CJK}]+)")
_WORD = re.compile(r"[a-z0-9]+(?:[:.][0-9]+)*")
_STOPWORDS = frozenset(
    "a an the of to in on at for and or is are was were be been am by with as it its this that from which "
    "who whom what when where how do does did can could will would should shall may might there their they "
    "you your i me my we our us has have had not if any some so than then too very just about into please "
    "tell know want like need get much many".split()
)
_ZH_STOPWORDS = frozenset(
    "的 了 吗 呢 是 在 有 和 与 及 请问 我 你 我们 什么 哪 哪里 哪些 多少 几 怎么 如何 吧 啊".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?。！？；;])\s*")


class RetrievalError(ValueError):
    """No index can be built or searched; the message says what to run first."""


@dataclass(frozen=True)
class Passage:
    """One searchable piece of a page (or one QA pair), with where it came from."""

    id: str
    source: str  # key of the page or pair it came from (for incremental refresh)
    url: str
    title: str
    text: str
    kind: str = "page"  # "page" or "qa"


@dataclass(frozen=True)
class Hit:
    """A passage found for a query, with its BM25 score."""

    passage: Passage
    score: float


@dataclass
class IndexReport:
    """What a build did."""

    index_dir: Path
    sources: int
    passages: int
    reused: int  # sources whose passages were kept as they were
    rebuilt: int  # sources split and tokenised again
    removed: int  # sources gone since the last build
    seconds: float


# ---------------------------------------------------------------- pure core


_STEMMER = None
_STEMMER_LOCK = threading.Lock()


def _stem(words: list[str]) -> list[str]:
    global _STEMMER
    with _STEMMER_LOCK:
        if _STEMMER is None:
            import Stemmer

            _STEMMER = Stemmer.Stemmer("english")
        return _STEMMER.stemWords(words)


_RANGE_SEPARATORS = re.compile(r"\s*(?:-|–|—|~|～|〜|至|到|\bto\b|\buntil\b|\btill\b)\s*", re.I)


_THOUSANDS = re.compile(r"(?<![\d.])(\d{1,3}(?:\.\d)?)[kK]\b")


def normalize_numbers(text: str) -> str:
    """Text with numbers written one way: full-width digits as ASCII, no thousands separators
    ("1,200" -> "1200", "30k" -> "30000"), and ranges split into their ends ("8:00-22:00", "8:00 to 22:00", "8:00至22:00"
    all become "8:00 22:00"), so a fact and its restatement compare equal. The one rule for QA grounding,
    search tokens and evaluation's fact matching."""
    import unicodedata

    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(?<=\d)[,，](?=\d{3}(?!\d))", "", text)
    text = _THOUSANDS.sub(lambda m: str(round(float(m.group(1)) * 1000)), text)  # "£30k" -> "£30000"
    return re.sub(r"(?<=\d)" + _RANGE_SEPARATORS.pattern + r"(?=\d)", " ", text, flags=re.I)


def tokenize(text: str) -> list[str]:
    """Search tokens: stemmed English words without stop words, numbers, jieba words for Chinese."""
    words: list[str] = []
    cjk: list[str] = []
    text = normalize_numbers(text)
    # Acronyms that look like stop words ("IT", "US") are names here: keep them.
    acronyms = {w.lower() for w in re.findall(r"\b[A-Z]{2,}\b", text)}
    for part in _SEGMENT.split(text.lower()):
        if not part:
            continue
        if _CJK_RE.match(part):
            import jieba

            cjk += [w for w in jieba.lcut_for_search(part) if w.strip() and w not in _ZH_STOPWORDS]
        else:
            for w in _WORD.findall(part):
                if w in _STOPWORDS and w not in acronyms:
                    continue
                words.append(w)
                if not w.isdigit() and re.search(r"\d", w):  # "8:00" also matches "8"
                    words += [p for p in re.split(r"[:.]", w) if p]
    return _stem(words) + cjk


# Campus words students use for what the pages call otherwise (query side only: a question that
# names one word of a group also searches for the others). Kept small: each group is one topic.
SYNONYMS = (
    "president chancellor principal rector leader leads head charge",
    "founded established founding history old",
    "dorm dormitory residence housing accommodation hall halls",
    "eat food meal meals dining canteen cafeteria dinner lunch breakfast",
    "wifi wi-fi wireless network internet",
    "phone call ring telephone contact",
    "cost price fee fees tuition pay charge much expensive",
    "deadline due cutoff last",
    "borrow loan checkout",
    "clinic hospital doctor medical sick health",
    "laptop computer helpdesk tech it",
    "vacation vacations holiday holidays break easter christmas summer",
    "visit visiting tour look",
    "shuttle bus transport",
    "scholarship award aid grant bursary",
    "宿舍 住宿 公寓 住",
    "食堂 餐厅 吃饭 就餐",
    "电话 联系 号码 热线",
    "费用 学费 多少钱 收费",
    "校长 领导",
    "创建 成立 始建 建校 历史",
    "无线 网络 上网",
    "医院 看病 校医院 急诊",
    "奖学金 资助 助学金",
)


def _synonym_table() -> dict[str, set[str]]:
    table: dict[str, set[str]] = {}
    for group in SYNONYMS:
        words = group.split()
        stems = [w if _CJK_RE.match(w) else _stem([w.replace("-", "")])[0] for w in words]
        for stem in stems:
            table.setdefault(stem, set()).update(stems)
    return table


_SYNONYM_TABLE: dict[str, set[str]] | None = None


def expand_query(tokens: list[str]) -> list[str]:
    """The query's tokens plus the other words of each synonym group it touches."""
    global _SYNONYM_TABLE
    if _SYNONYM_TABLE is None:
        _SYNONYM_TABLE = _synonym_table()
    extra: list[str] = []
    for t in tokens:
        extra += sorted(_SYNONYM_TABLE.get(t, set()) - set(tokens) - set(extra))
    return tokens + extra


def split_passages(text: str, max_chars: int | None = None) -> list[str]:
    """Paragraphs grouped into passages of at most ~max_chars; a longer paragraph is cut at sentence ends."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    if max_chars is None:
        cjk_share = len(_CJK_RE.findall(text)) / max(len(text), 1)
        max_chars = CJK_PASSAGE_CHARS if cjk_share > 0.3 else PASSAGE_CHARS
    pieces: list[str] = []
    for line in lines:
        if len(line) <= max_chars:
            pieces.append(line)
            continue
        current = ""
        for sentence in (s for s in _SENTENCE_END.split(line) if s):
            if current and len(current) + len(sentence) + 1 > max_chars:
                pieces.append(current)
                current = ""
            current = (
                f"{current} {sentence}".strip()
                if current and not _CJK_RE.search(sentence[:1])
                else (current + sentence)
            )
        if current:
            pieces.append(current)
    passages: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + len(piece) + 1 > max_chars:
            passages.append(current)
            current = piece
        else:
            current = f"{current}\n{piece}" if current else piece
    if current:
        passages.append(current)
    return passages


def passages_of(source: str, url: str, title: str, text: str, kind: str = "page") -> list[Passage]:
    """The passages of one source, with stable ids (source key + number)."""
    return [
        Passage(f"{source}#{i}", source, url, title, body, kind)
        for i, body in enumerate(split_passages(text) if kind == "page" else [text])
    ]


def is_chinese(text: str) -> bool:
    """True when the text is mostly Chinese (decides the prompt's language)."""
    return len(_CJK_RE.findall(text)) >= max(2, len(text.strip()) // 5)


def context_block(hits: list[Hit]) -> str:
    """The numbered passages as the model sees them."""
    return "\n\n".join(f"[{n}] {h.passage.title}\n{h.passage.text}" for n, h in enumerate(hits, 1))


def grounded_question(question: str, hits: list[Hit]) -> str:
    """The user turn of a grounded question: the passages, then the question (same in training and use)."""
    if is_chinese(question):
        head = "校园网页资料："
        tail = f"请根据以上资料回答：{question}"
    else:
        head = "Campus pages:"
        tail = f"Answer from the pages above: {question}"
    if not hits:
        return tail
    return f"{head}\n{context_block(hits)}\n\n{tail}"


def grounded_messages(
    history: list[dict], question: str, hits: list[Hit], system_prompt: str = ""
) -> list[dict]:
    """A chat whose last user turn carries the retrieved passages; earlier turns stay as they were."""
    messages = [{"role": "system", "content": system_prompt.strip()}] if system_prompt.strip() else []
    messages += [
        {"role": t["role"], "content": t["content"]}
        for t in history
        if t.get("role") in ("user", "assistant") and isinstance(t.get("content"), str)
    ]
    messages.append({"role": "user", "content": grounded_question(question, hits)})
    return messages


def support_share(text: str, passage_text: str) -> float:
    """Share of `text`'s search tokens found in `passage_text`, numbers counting double (they are the
    facts): how far a passage supports a reply or an answer."""
    want = set(tokenize(text))
    if not want:
        return 0.0
    have = set(tokenize(passage_text))
    weight = {u: (2.0 if any(c.isdigit() for c in u) else 1.0) for u in want}
    return sum(weight[u] for u in want & have) / sum(weight.values())


def cited_hits(reply: str, hits: list[Hit]) -> list[Hit]:
    """The passages a reply rests on, best first, one per URL.

    Explicit markers ("[2]") win; otherwise each passage is scored by the share of the reply's
    search tokens it contains (numbers count double: they are the facts), and passages within
    half of the best are cited. When no passage holds even a quarter of the reply, the top search hit
    is cited (demo site, Chinese questions to the English-only model: right page cited 0.60 -> 0.67).
    """
    if not hits:
        return []
    marked = [int(m) for m in re.findall(r"\[(\d{1,2})\]", reply) if 1 <= int(m) <= len(hits)]
    if marked:
        order = list(dict.fromkeys(marked))
        return _one_per_url([hits[n - 1] for n in order])
    if not tokenize(reply):
        return [hits[0]]
    scored = [
        (support_share(reply, f"{hit.passage.title}\n{hit.passage.text}"), -rank, hit)
        for rank, hit in enumerate(hits)
    ]
    scored.sort(key=lambda t: (t[0], t[1]), reverse=True)
    best = scored[0][0]
    if best < WEAK_SUPPORT:  # the reply rests on no passage (e.g. a Chinese question to an English-only
        return [hits[0]]  # model): the search's best passage is the honest source to show
    return _one_per_url([h for s, _, h in scored if s >= best * 0.5])


def _one_per_url(hits: list[Hit]) -> list[Hit]:
    seen: set[str] = set()
    out = []
    for h in hits:
        if h.passage.url not in seen:
            seen.add(h.passage.url)
            out.append(h)
    return out


def format_sources(hits: list[Hit]) -> str:
    """One line per cited source: '[n] URL' (n numbers the sources)."""
    return "\n".join(f"[{n}] {h.passage.url}" for n, h in enumerate(hits, 1))


# ---------------------------------------------------------------- the stored index


def index_dir(project: Project) -> Path:
    return project.root / "index"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def qa_source_key(url: str, question: str) -> str:
    """The index's source key of a QA pair (its passage's `source`)."""
    return "qa:" + _sha(f"{url}\n{question.strip()}")


def collect_sources(project: Project) -> list[tuple[str, str, str, str, str]]:
    """(key, url, title, text, kind) for every page and QA pair of the project."""
    from blocks.clean import StageInputError, read_jsonl, read_page_text, read_pages

    sources = []
    try:
        pages = read_pages(project.crawl_dir)
    except StageInputError:
        pages = []  # no crawl yet: QA pairs alone can still be searched
    for page in pages:
        cleaned = project.clean_dir / f"{page.id}.txt"
        try:
            text = read_page_text(cleaned if cleaned.is_file() else project.crawl_dir / page.text_file)
        except StageInputError:
            continue
        sources.append((f"page:{page.id}", page.url, page.title, text, "page"))
    for rec in read_jsonl(project.qa_file):
        q, a = rec.get("question"), rec.get("answer")
        url = rec.get("source_url") or ""
        if not (
            isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip() and isinstance(url, str)
        ):
            continue
        title = rec.get("title") if isinstance(rec.get("title"), str) else ""
        key = qa_source_key(url, q)
        sources.append((key, url, title or url, f"Q: {q.strip()}\nA: {a.strip()}", "qa"))
    return sources


def read_passages(project: Project) -> list[dict]:
    """The stored passage records (with their tokens); [] when no index was built."""
    from blocks.clean import read_jsonl

    return read_jsonl(index_dir(project) / "passages.jsonl")


def build_index(project: Project, on_progress: Callable[[int, int], None] | None = None) -> IndexReport:
    """Build or refresh data/<project>/index/: only sources whose text changed are split again."""
    from blocks.clean import write_text_atomic

    started = time.monotonic()
    sources = collect_sources(project)
    if not sources:
        raise RetrievalError(
            f"Nothing to index in project {project.name!r}: crawl a site (tab 1) or write QA pairs "
            "(qa/qa.jsonl) first."
        )
    old: dict[str, list[dict]] = {}
    for rec in read_passages(project):
        old.setdefault(rec.get("source", ""), []).append(rec)
    lines: list[str] = []
    reused = rebuilt = 0
    for n, (key, url, title, text, kind) in enumerate(sources, 1):
        sha = _sha(f"{INDEX_VERSION}\n{url}\n{title}\n{text}")
        previous = old.get(key)
        if previous and all(r.get("sha") == sha for r in previous):
            lines += [json.dumps(r, ensure_ascii=False) for r in previous]
            reused += 1
        else:
            for p in passages_of(key, url, title, text, kind):
                rec = {**asdict(p), "sha": sha, "tokens": tokenize(f"{p.title}\n{p.text}")}
                lines.append(json.dumps(rec, ensure_ascii=False))
            rebuilt += 1
        if on_progress and (n % 50 == 0 or n == len(sources)):
            on_progress(n, len(sources))
    removed = len(set(old) - {s[0] for s in sources})
    folder = index_dir(project)
    write_text_atomic(folder / "passages.jsonl", "\n".join(lines) + "\n")
    manifest = {
        "version": INDEX_VERSION,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": len(sources),
        "pages": sum(1 for s in sources if s[4] == "page"),
        "qa_pairs": sum(1 for s in sources if s[4] == "qa"),
        "passages": len(lines),
    }
    write_text_atomic(folder / "manifest.json", json.dumps(manifest, indent=1) + "\n")
    return IndexReport(folder, len(sources), len(lines), reused, rebuilt, removed, time.monotonic() - started)


def has_index(project: Project) -> bool:
    return (index_dir(project) / "passages.jsonl").is_file()


class SearchIndex:
    """A loaded index: BM25 over the stored passages' tokens."""

    def __init__(self, records: list[dict]) -> None:
        import bm25s

        self.passages = [
            Passage(r["id"], r["source"], r["url"], r["title"], r["text"], r.get("kind", "page"))
            for r in records
        ]
        self._bm25 = bm25s.BM25()
        self._bm25.index([r["tokens"] or ["\x00"] for r in records], show_progress=False)

    def search(self, query: str, k: int = TOP_K, exclude: set[str] | None = None) -> list[Hit]:
        """The k best passages for `query` (score > 0), skipping passages whose source is in `exclude`."""
        tokens = expand_query(tokenize(query))
        if not tokens or not self.passages:
            return []
        want = min(len(self.passages), k + (len(exclude) * 8 if exclude else 0) + 8)
        ids, scores = self._bm25.retrieve([tokens], k=want, show_progress=False)
        hits = []
        for i, s in zip(ids[0], scores[0], strict=True):
            p = self.passages[int(i)]
            if s <= 0 or (exclude and p.source in exclude):
                continue
            hits.append(Hit(p, float(s)))
            if len(hits) == k:
                break
        return hits

    def passages_of_url(self, url: str) -> list[Passage]:
        return [p for p in self.passages if p.url == url]


_CACHE: dict[Path, tuple[float, SearchIndex]] = {}
_CACHE_LOCK = threading.Lock()


def load_index(project: Project) -> SearchIndex:
    """The project's index (kept in memory until its file changes); RetrievalError if none was built."""
    path = index_dir(project) / "passages.jsonl"
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        raise RetrievalError(
            f"Project {project.name!r} has no retrieval index: run `python -m blocks.index --project "
            f"{project.name}` (it is also built after a crawl or clean)."
        ) from None
    with _CACHE_LOCK:
        cached = _CACHE.get(path)
        if cached and cached[0] == mtime:
            return cached[1]
        index = SearchIndex(read_passages(project))
        _CACHE[path] = (mtime, index)
        return index


def is_stale(project: Project) -> bool:
    """True when there is no index, or a crawl, clean or QA run wrote after it was built."""
    built = index_dir(project) / "passages.jsonl"
    if not built.is_file():
        return True
    inputs = [project.crawl_dir / "pages.jsonl", project.qa_file, project.clean_dir]
    newest = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return newest > built.stat().st_mtime


def ensure_index(project: Project) -> SearchIndex:
    """The project's index, refreshed first when missing or older than the pages (RetrievalError if there
    is nothing to index). The refresh re-splits only changed pages, so this is cheap."""
    if is_stale(project):
        build_index(project)
    return load_index(project)


def retrieve(project: Project, question: str, k: int = TOP_K) -> list[Hit]:
    """The passages to answer `question` from (the index refreshed first if the pages changed)."""
    return ensure_index(project).search(question, k)


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default="demo")
    parser.add_argument("--query", default=None, help="search the index (built first if missing)")
    parser.add_argument("-k", type=int, default=TOP_K, help=f"passages to show (default {TOP_K})")
    args = parser.parse_args(argv)
    try:
        project = get_project(args.project)
        if args.query is None or not has_index(project):
            r = build_index(project)
            print(
                f"index of {project.name}: {r.sources} sources, {r.passages} passages "
                f"({r.rebuilt} sources (re)indexed, {r.reused} unchanged, {r.removed} removed) "
                f"in {r.seconds:.1f} s -> {r.index_dir}"
            )
        if args.query is not None:
            for n, hit in enumerate(retrieve(project, args.query, max(1, args.k)), 1):
                text = " ".join(hit.passage.text.split())
                print(f"[{n}] {hit.score:.2f} {hit.passage.url}\n    {hit.passage.title}: {text[:200]}")
    except (RetrievalError, WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
