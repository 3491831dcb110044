"""Generate question-answer pairs from cleaned (or raw) pages: -> qa/qa.jsonl, resumable.

Two methods (QASettings.method; "auto" picks by model size):
- passage (API and bigger models): token chunks with overlap -> one request per chunk asking for `n` JSON
  pairs (n scales with the chunk's length, the answer budget with n) -> parse (JSON, or Q:/A:, Q：/A：,
  numbered, bold forms; <think> removed) -> drop questions that do not stand alone and answers not
  supported by the chunk (lexical check with numbers normalised, optionally an LLM judge) -> paraphrase
  variants (default 2 per question, each keeping the question's numbers and names).
- sentence (small local models such as the embedded SmolLM2-135M): for each fact sentence of a page, a
  few-shot request for the one question it answers (~20 new tokens, the row ends at its question mark);
  the answer is the sentence itself, so it is grounded by construction; questions that name what the
  page does not, give the answer away or are off topic are dropped.
Then duplicates are removed. Each finished page is written atomically to qa/pages/<id>.jsonl and
recorded in qa/state.jsonl; qa/qa.jsonl is rebuilt from those files (atomically) after every wave and at
the end, so a crash never leaves half a line and a rerun adds only the missing pages, without duplicates.
The report carries requests done of all, tokens/s and an ETA while a page is still being worked on.

    python -m blocks.qa --project demo --backend local                   # embedded SmolLM2 (sentence method)
    python -m blocks.qa --project demo --backend zhipu --variants 3      # key: ZHIPUAI_API_KEY
    python -m blocks.qa --project demo --backend openai --base-url http://127.0.0.1:8000/v1 --model qwen --judge
    python -m blocks.qa --project demo --source raw --prompt-lang en
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from blocks.chunking import Chunk, chunk_text, split_sentences
from blocks.clean import (
    Page,
    RunReport,
    StageInputError,
    add_client_args,
    append_jsonl,
    check_fatal,
    check_numbers,
    check_prompt,
    client_from_args,
    fill_prompt,
    fit_chunk_tokens,
    is_utf8_text,
    json_line,
    load_prompt,
    now_iso,
    on_gpu,
    prompt_version,
    read_jsonl,
    read_page_text,
    read_pages,
    read_prompt_file,
    read_state,
    remove_stale_temp_files,
    run_cli,
    sha256_text,
    strip_fences,
    strip_think,
    write_text_atomic,
)
from blocks.index import is_chinese, normalize_numbers
from blocks.llm import (
    ChatClient,
    Heartbeat,
    LLMError,
    LocalClient,
    Request,
    RetryPolicy,
    StopSignal,
    run_requests,
    unload_local_models,
)
from blocks.workspace import Project, get_project

SOURCES = ("auto", "clean", "raw")


class NoQAError(LLMError):
    """Every answer for a page was unusable (garbage, refusals, only <think>): the page is failed."""

    reason = "no_qa"


@dataclass
class QAPair:
    """One line of qa/qa.jsonl (see docs/CONTRACTS.md); `variant_of` links a paraphrase to its original."""

    id: str
    question: str
    answer: str
    source_url: str
    title: str
    chunk_id: str
    backend: str
    model: str
    prompt_version: str
    created_at: str
    variant_of: str | None = None


METHODS = ("auto", "passage", "sentence")
SMALL_MODEL_PARAMETERS = 1_000_000_000  # below this a local model gets the sentence method (see QASettings)
# Paraphrases per question for API and bigger models (variants=None). The embedded 135M model gets 0:
# of 16 paraphrases it wrote for demo-site questions (zh and en prompts, benchmarks/qa_offline.py),
# 1 was a usable question; the rest were prompt echoes, JSON fragments, statements or invented names.
DEFAULT_VARIANTS = 2
SENTENCE_CHUNK_TOKENS = 256  # sentence method: chunks this small, so max_questions rarely leaves facts out
QUESTION_TOKENS = 40  # sentence method: new tokens for one question (~30 English words, ~20 汉字)


@dataclass
class QASettings:
    """How pairs are generated (the client is separate).

    method "passage" asks the model for `n` JSON pairs per chunk (needs a model that follows
    instructions: API models, 7B+ local ones). method "sentence" asks, for each fact sentence of the page,
    only for the question that sentence answers (a few-shot prompt, ~20 new tokens); the answer is the
    sentence itself, so it is grounded by construction: what a 135M model can do well. "auto" picks
    "sentence" for local models under 1B parameters, else "passage". variants None = DEFAULT_VARIANTS
    paraphrases per question for "passage" models, 0 for the sentence method (the embedded 135M
    model's paraphrases drop or change the facts: measured in benchmarks/qa_offline.py).
    """

    prompt: str = ""  # empty = default in prompt_lang
    prompt_lang: str = "zh"
    source: str = "auto"  # auto: cleaned text where it exists, else the crawl text
    method: str = "auto"
    question_prompt: str = ""  # sentence method; empty = default in the fact's language
    chunk_tokens: int = 800
    overlap_tokens: int = 80
    tokens_per_question: int = 80
    max_questions: int = 8
    new_tokens_per_question: int = 64  # passage method: the answer budget is 32 + n x this ...
    max_new_tokens: int = 1024  # ... capped here
    temperature: float = 0.3
    grounding_threshold: float = 0.5
    judge: bool = False
    judge_prompt: str = ""
    variants: int | None = None  # extra phrasings per question; None = by method (see above)
    paraphrase_prompt: str = ""
    concurrency: int = 4
    overwrite: bool = False
    release_model: bool | None = None  # local backend: unload at the end (None = only on GPU)
    # "en": only pages mostly in Latin script (an English-only model such as the embedded SmolLM2
    # makes almost nothing of Chinese pages: 4 weak pairs from 17 pages in ~5 min); "" = every page.
    # Skipped pages stay in the retrieval index, so Chinese questions are still answered from them.
    only_language: str = ""

    def check(self) -> QASettings:
        """Return self, or raise StageInputError naming the setting that cannot work."""
        if self.source not in SOURCES:
            raise StageInputError(f"unknown source {self.source!r}: choose one of {', '.join(SOURCES)}")
        if self.method not in METHODS:
            raise StageInputError(f"unknown method {self.method!r}: choose one of {', '.join(METHODS)}")
        check_numbers(
            chunk_tokens=(self.chunk_tokens, 16, 1_000_000),
            overlap_tokens=(self.overlap_tokens, 0, 1_000_000),
            tokens_per_question=(self.tokens_per_question, 1, 1_000_000),
            max_questions=(self.max_questions, 1, 100),
            new_tokens_per_question=(self.new_tokens_per_question, 8, 100_000),
            max_new_tokens=(self.max_new_tokens, 16, 1_000_000),
            temperature=(self.temperature, 0, 2),
            grounding_threshold=(self.grounding_threshold, 0, 1),
            concurrency=(self.concurrency, 1, 64),
        )
        if self.variants is not None:
            check_numbers(variants=(self.variants, 0, 10))
        return self

    def templates(self) -> tuple[str, str, str]:
        qa = check_prompt(self.prompt or load_prompt("qa", self.prompt_lang), ("{text}", "{n}"))
        judge = check_prompt(
            self.judge_prompt or load_prompt("judge", self.prompt_lang), ("{text}", "{question}", "{answer}")
        )
        para = check_prompt(
            self.paraphrase_prompt or load_prompt("paraphrase", self.prompt_lang), ("{question}", "{k}")
        )
        return qa, judge, para

    def question_templates(self) -> dict[str, str]:
        """The sentence method's few-shot prompt per fact language (a custom one serves both)."""
        custom = self.question_prompt.strip()
        return {
            lang: check_prompt(custom or load_prompt("question", lang), ("{fact}",)) for lang in ("en", "zh")
        }


def is_small_local_model(client: ChatClient) -> bool:
    """True for an in-process model too small to follow the passage prompt (the embedded SmolLM2)."""
    return isinstance(client, LocalClient) and client.n_parameters < SMALL_MODEL_PARAMETERS


def resolve_method(settings: QASettings, client: ChatClient) -> str:
    """The method "auto" stands for with this client."""
    if settings.method != "auto":
        return settings.method
    return "sentence" if is_small_local_model(client) else "passage"


def resolve_variants(settings: QASettings, method: str) -> int:
    """Paraphrases per question: the setting, or the measured default of the method."""
    if settings.variants is not None:
        return settings.variants
    return 0 if method == "sentence" else DEFAULT_VARIANTS


def answer_budget(settings: QASettings, n_questions: int) -> int:
    """New tokens for a passage answer of `n_questions` pairs (a JSON pair is ~40-60 tokens)."""
    return min(settings.max_new_tokens, 32 + n_questions * settings.new_tokens_per_question)


# ---------------------------------------------------------------- parsing

_Q_KEYS = ("question", "q", "问题", "问", "query", "instruction")
_A_KEYS = ("answer", "a", "答案", "答", "response", "output")
_Q_MARK = re.compile(r"^(?:\d+\s*[.、)）]\s*)?(?:Q\s*\d*|Question\s*\d*|问题\s*\d*|问)\s*[:：.]\s*", re.I)
_A_MARK = re.compile(r"^(?:A\s*\d*|Answer\s*\d*|答案\s*\d*|答|回答)\s*[:：.]\s*", re.I)
_NUMBERED = re.compile(r"^\d+\s*[.、)）]\s*")


def _pairs_from_json(value) -> list[tuple[str, str]]:
    if isinstance(value, dict):
        for key in ("pairs", "qa", "qa_pairs", "questions", "data", "items"):
            if isinstance(value.get(key), list):
                return _pairs_from_json(value[key])
        value = [value]
    pairs = []
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        low = {str(k).strip().lower(): v for k, v in item.items()}
        q = next((low[k] for k in _Q_KEYS if k in low), None)
        a = next((low[k] for k in _A_KEYS if k in low), None)
        if isinstance(q, str) and isinstance(a, str | int | float):
            pairs.append((q.strip(), str(a).strip()))
    return pairs


def _json_candidates(text: str) -> Iterator[str]:
    yield text
    for m in re.finditer(r"```(?:json)?\s*\n?(.*?)```", text, flags=re.S):
        yield m.group(1)
    for open_, close in (("[", "]"), ("{", "}")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            yield text[start : end + 1]


def parse_qa_pairs(text: str) -> list[tuple[str, str]]:
    """Question-answer pairs from a model's answer: JSON first, then the common text forms."""
    text = strip_think(text)
    for candidate in _json_candidates(text):
        try:
            pairs = _pairs_from_json(json.loads(candidate))
        except (json.JSONDecodeError, RecursionError):  # RecursionError: "[[[[…" nested too deeply
            continue
        if pairs:
            return [p for p in pairs if p[0] and p[1]]
    lines = []  # JSON lines: one object per line
    for line in text.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{") and line.endswith("}"):
            try:
                lines.extend(_pairs_from_json(json.loads(line)))
            except (json.JSONDecodeError, RecursionError):
                pass
    if lines:
        return lines
    return _parse_text_pairs(text)


def _parse_text_pairs(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    q: list[str] | None = None
    a: list[str] | None = None

    def flush() -> None:
        if q and a and " ".join(q).strip() and " ".join(a).strip():
            pairs.append((" ".join(q).strip(), " ".join(a).strip()))

    lines = [re.sub(r"\*\*|__|^#+\s*|^[-*•]\s+", "", raw.strip()).strip() for raw in text.splitlines()]
    lines = [line for line in lines if line]
    for n, line in enumerate(lines[:-1]):  # "What ...?" on its own line, then "A: ...": a question
        if line.endswith(("?", "？")) and _A_MARK.match(lines[n + 1]) and not _Q_MARK.match(line):
            lines[n] = "Q: " + _NUMBERED.sub("", line, count=1)
    for line in lines:
        if _Q_MARK.match(line):
            flush()
            q, a = [_Q_MARK.sub("", line, count=1)], None
        elif _A_MARK.match(line) and q is not None:
            a = [_A_MARK.sub("", line, count=1)]
        elif _NUMBERED.match(line) and (a is not None or q is None) and line.rstrip().endswith(("?", "？")):
            flush()  # "1. When does the library open?" followed by the answer on the next line
            q, a = [_NUMBERED.sub("", line, count=1)], []
        elif a is not None:
            a.append(line)
        elif q is not None:
            q.append(line)
    flush()
    return pairs


def parse_variants(text: str) -> list[str]:
    """Rephrased questions from a JSON array of strings, or one per line."""
    text = strip_fences(strip_think(text))
    start, end = text.find("["), text.rfind("]")
    if 0 <= start < end:
        try:
            items = json.loads(text[start : end + 1])
            return [s.strip() for s in items if isinstance(s, str) and s.strip()]
        except (json.JSONDecodeError, RecursionError):
            pass
    return [
        _NUMBERED.sub("", re.sub(r"^[-*•]\s+", "", ln.strip())).strip()
        for ln in text.splitlines()
        if ln.strip()
    ]


# ---------------------------------------------------------------- quality

_DEICTIC = re.compile(
    r"\b(this|these|the above|the following|the given|that) (page|article|text|passage|document|notice|website|"
    r"web page|section|announcement|sentence|statement|paragraph|guide)\b"
    r"|\baccording to (the|this) (page|article|text|passage|document|notice|statement|sentence|above)\b"
    r"|\b(mentioned|stated|described|listed|shown) (above|below|here)\b|\bthe above\b"
    r"|本文|本页|该页|此页|本网页|该网页|这个网页|上文|文中|该文|这篇|此文|本通知|该通知|这个通知|原文|上述|文章中|材料中"
    r"|以上(内容|材料|文字|信息|通知|文章|所述|提到|介绍)|如上所述",
    re.I,
)
_STOPWORDS = set(
    "the a an of to in on at for and or is are was were be been by with as it its this that from which who what "
    "when where how do does did can will there their they you your i we our has have had not much many".split()
)


def numbers_in(text: str) -> set[str]:
    """The numbers of `text` after normalize_numbers, leading zeros dropped ("08:00" = "8:00")."""
    found = set()
    for num in re.findall(r"\d+(?:[.:]\d+)*", normalize_numbers(text)):
        found.add(re.sub(r"^0+(?=\d)", "", num))
    return found


def is_standalone(question: str) -> bool:
    """False for questions that only make sense next to the page ('this page', '本文', ...)."""
    return not _DEICTIC.search(question)


def _units(text: str) -> set[str]:
    """Comparable pieces of text: Chinese character bigrams, lower-cased words, numbers."""
    text = normalize_numbers(text).lower()
    units = {w for w in re.findall(r"[a-z0-9]+(?:[.:][0-9]+)*", text) if w not in _STOPWORDS}
    for run in re.findall(r"[\u4e00-\u9fff]+", text):
        units.update(run[i : i + 2] for i in range(len(run) - 1)) if len(run) > 1 else units.add(run)
    return units


def support_score(answer: str, chunk: str) -> float:
    """Share of the answer's words / character bigrams found in the chunk (1.0 = all)."""
    units = _units(answer)
    if not units:
        return 0.0
    return len(units & _units(chunk)) / len(units)


def is_grounded(answer: str, chunk: str, threshold: float = 0.5) -> bool:
    """Lexical support check: enough overlap, and every number of the answer appears in the chunk
    (compared after normalize_numbers: "1,200" matches "1200", "8:00-22:00" matches "8:00 to 22:00")."""
    if not numbers_in(answer) <= numbers_in(chunk):
        return False
    return support_score(answer, chunk) >= threshold


def normalize_question(question: str) -> str:
    """Case-, space- and punctuation-free form used to find duplicates."""
    return re.sub(r"[\W_]+", "", question.lower())


def _bigrams(s: str) -> set[str]:
    return {s[i : i + 2] for i in range(len(s) - 1)} or {s}


def is_near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Character-bigram Jaccard similarity of two normalised questions."""
    sa, sb = _bigrams(normalize_question(a)), _bigrams(normalize_question(b))
    return len(sa & sb) / max(len(sa | sb), 1) >= threshold


def questions_for(chunk: Chunk, tokens_per_question: int, max_questions: int) -> int:
    """How many questions to ask of a chunk: one per `tokens_per_question` tokens, 1..max."""
    return max(1, min(max_questions, round(chunk.n_tokens / max(tokens_per_question, 1))))


def judge_says_yes(text: str) -> bool:
    """Read a judge's yes/no answer (English or Chinese)."""
    head = strip_think(text).strip().lower()[:20]
    if re.match(r"^\W*(no|否|不)", head):
        return False
    return bool(re.match(r"^\W*(yes|是|支持|对)", head))


def pair_id(source_url: str, question: str) -> str:
    return hashlib.sha1(f"{source_url}\n{normalize_question(question)}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- sentence method

_CJK = re.compile(r"[\u4e00-\u9fff]")
_QUESTION_WORDS = set(
    "what when where which who whom whose why how much many long does do is are can could should would "
    "time times number cost costs".split()
)
_GENERIC_ZH = {
    "什么",
    "多少",
    "哪里",
    "几点",
    "哪些",
    "是否",
    "如何",
    "怎么",
    "怎样",
    "请问",
    "可以",
    "需要",
    "时候",
}
_ASKS = re.compile(  # a question word: "关于…的通知？" or "Tuition is 6380?" is not a question
    r"^\W*(what|when|where|which|who|whom|whose|why|how|is|are|was|were|do|does|did|can|could|should|will|"
    r"would|may|must|has|have)\b|什么|多少|哪|几|吗|如何|怎么|怎样|是否|谁|何|有没有|能否|可否",
    re.I,
)
_ZH_NAME = re.compile(r"[\u4e00-\u9fff]{1,8}?(?:大学|学院|图书馆|食堂|中心|办公室|医院|公寓|餐厅|校区|处)")


def fact_lang(text: str) -> str:
    """'zh' when a sentence is mostly Chinese characters, else 'en'."""
    letters = [ch for ch in text if ch.isalpha()]
    return "zh" if letters and sum(bool(_CJK.match(ch)) for ch in letters) / len(letters) > 0.3 else "en"


def select_facts(text: str, title: str = "") -> list[str]:
    """The sentences of a chunk worth a question: headings, menus and footers left out.

    A fact has a number and 2+ words, or 5+ words (English) / 10+ characters (Chinese).
    """
    facts = []
    for sentence in split_sentences(text):
        if sentence == title.strip() or " | " in sentence or "©" in sentence or len(sentence) > 400:
            continue
        has_number = bool(re.search(r"\d", sentence))
        if fact_lang(sentence) == "zh":
            size = len(_CJK.findall(sentence))
            keep = size >= 10 or (has_number and size >= 4)
        else:
            words = len(sentence.split())
            keep = words >= 5 or (has_number and words >= 2)
        if keep and sentence not in facts:
            facts.append(sentence)
    return facts


def build_question_messages(template: str, title: str, fact: str) -> list[dict[str, str]]:
    """Few-shot chat for the sentence method: the template's first paragraph is the system message, each
    middle paragraph `statement => question` one user/assistant exchange, the last the request."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", template.strip()) if p.strip()]
    messages = []
    if len(paragraphs) > 1:
        messages.append({"role": "system", "content": paragraphs[0]})
    for shot in paragraphs[1:-1]:
        statement, _, question = shot.partition("=>")
        messages.append({"role": "user", "content": statement.strip()})
        messages.append({"role": "assistant", "content": question.strip()})
    messages.append({"role": "user", "content": fill_prompt(paragraphs[-1], title=title, fact=fact)})
    return messages


def read_question(text: str) -> str:
    """The question in a model's answer (up to its first question mark), or '' when there is none."""
    for line in strip_think(text).splitlines():
        line = re.sub(r"^\s*(?:=>|Q\s*:|Question\s*:|问题?\s*[:：])\s*", "", line.strip(), flags=re.I)
        line = line.strip().strip("\"'“”‘’「」*").strip()
        m = re.search(r"[?？]", line)
        if m:
            return line[: m.end()].strip("\"'“”‘’ ")
    return ""


def _names(text: str) -> set[str]:
    """Names and numbers of a sentence: capitalised words after the first, numbers, Chinese institutions."""
    words = re.findall(r"[A-Za-z][A-Za-z'’\-]*", text)
    names = {w.lower() for w in words[1:] if w[0].isupper()}
    return names | numbers_in(text) | set(_ZH_NAME.findall(text))


def check_question(question: str, fact: str, page_text: str) -> str | None:
    """Why a generated question does not fit its fact sentence (a drop reason), or None when it fits.

    It must be a standalone question about the fact (shares a content word or Chinese bigram with it), name
    nothing the page does not (a 135M model invents universities), and not give the answer away.
    """
    if not question or not question.endswith(("?", "？")) or not 3 <= len(question) <= 200:
        return "not_a_question"
    if not _ASKS.search(question):
        return "not_a_question"
    if not is_standalone(question):
        return "not_standalone"
    shared = {u for u in _units(question) & _units(fact) if u not in _QUESTION_WORDS | _GENERIC_ZH}
    if not shared:
        return "off_topic"
    page = normalize_numbers(page_text).lower()
    page_numbers = numbers_in(page_text)
    for name in _names(question):
        if (name not in page_numbers) if name[:1].isdigit() else (name.lower() not in page):
            return "invented_name"
    answer_numbers = numbers_in(fact)
    if answer_numbers and answer_numbers <= numbers_in(question):
        return "gives_answer"
    return None


def keeps_key_terms(original: str, variant: str) -> bool:
    """True when a paraphrase keeps every number, date and name of the question it rewords."""
    kept = variant.lower()
    for name in _names(original):
        if name[:1].isdigit():
            if name not in numbers_in(variant):
                return False
        elif name.lower() not in kept:
            return False
    return True


# ---------------------------------------------------------------- the stage


def read_source_text(project: Project, page: Page, source: str) -> str:
    """The page text the QA stage uses; StageInputError (with a reason label) when there is none."""
    cleaned = project.clean_dir / f"{page.id}.txt"
    if source in ("auto", "clean") and cleaned.is_file():
        return read_page_text(cleaned)
    if source == "clean":
        raise StageInputError("not_cleaned: no cleaned text; run a clean tab first or use source auto/raw")
    return read_page_text(project.crawl_dir / page.text_file)


def assemble_qa_file(project: Project, pages: list[Page] | None = None) -> int:
    """Rebuild qa/qa.jsonl from the per-page files of finished pages, dropping repeated questions.

    A page whose latest attempt failed keeps the pairs of its last successful run (its per-page file is
    only ever replaced by a success), so a failed rerun never takes pairs away from qa.jsonl.
    """
    state = read_state(project.qa_dir / "state.jsonl")
    ids = [p.id for p in pages] if pages is not None else sorted(state)
    seen: set[str] = set()
    lines = []
    for page_id in ids:
        if state.get(page_id, {}).get("status") not in ("done", "failed"):
            continue
        for rec in read_jsonl(project.qa_dir / "pages" / f"{page_id}.jsonl"):
            if not isinstance(rec.get("question"), str):
                continue
            key = normalize_question(rec["question"])
            if key in seen:
                continue
            seen.add(key)
            lines.append(json_line(rec))
    write_text_atomic(project.qa_file, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)


def generate_qa(
    project: Project,
    client: ChatClient,
    settings: QASettings | None = None,
    stop: StopSignal | None = None,
    policy: RetryPolicy = RetryPolicy(),
) -> Iterator[RunReport]:
    """Generate pairs for every page not done yet; yields the report after each request and at the end."""
    settings = (settings or QASettings()).check()
    qa_t, judge_t, para_t = settings.templates()
    question_ts = settings.question_templates()
    pages = read_pages(project.crawl_dir)
    remove_stale_temp_files(project.qa_dir)
    state = read_state(project.qa_dir / "state.jsonl")
    report = RunReport("qa", total=len(pages))
    method = resolve_method(settings, client)
    variants = resolve_variants(settings, method)
    asked = (qa_t,) if method == "passage" else (question_ts["en"], question_ts["zh"], "sentence")
    version = prompt_version(
        *asked, judge_t if settings.judge else "", para_t if variants else "", str(variants)
    )
    todo = []
    for page in pages:
        try:
            text = read_source_text(project, page, settings.source)
        except StageInputError as exc:
            report.failed += 1
            report.failures[page.id] = str(exc)
            continue
        if settings.only_language == "en" and is_chinese(text):
            report.skipped += 1
            report.drop("pages_not_in_model_language")
            continue
        sha = sha256_text(text)
        prev = state.get(page.id)
        if (
            not settings.overwrite
            and prev
            and prev.get("status") in ("done", "empty")
            and prev.get("input_sha256") == sha
            and prev.get("prompt_version") == version
        ):
            report.skipped += 1
            continue
        todo.append((page, text, sha))
    yield report
    try:
        if todo:
            if method == "passage":
                budget = answer_budget(settings, settings.max_questions)
                size = fit_chunk_tokens(client, qa_t, settings.chunk_tokens, budget)
            else:
                size = min(settings.chunk_tokens, SENTENCE_CHUNK_TOKENS)
            job = _Job(settings, method, variants, qa_t, question_ts, judge_t, para_t, version, size)
            yield from _qa_todo(project, client, job, todo, report, stop, policy)
    finally:
        report.pairs = assemble_qa_file(project, pages)
        release = settings.release_model
        if isinstance(client, LocalClient) and (release or (release is None and on_gpu())):
            unload_local_models()
    report.finished = not report.stopped
    yield report


@dataclass
class _Job:
    """What one run asks of every page: settings resolved against the client, templates, chunk size."""

    settings: QASettings
    method: str
    variants: int
    qa_t: str
    question_ts: dict[str, str]
    judge_t: str
    para_t: str
    version: str
    size: int


def _asks_of(job: _Job, page: Page, text: str, count_tokens) -> list[tuple[Chunk, str | None, Request]]:
    """One page's requests: (chunk, fact sentence or None, request)."""
    settings = job.settings
    overlap = settings.overlap_tokens if job.method == "passage" else 0
    asks = []
    for chunk in chunk_text(text, job.size, count_tokens, overlap):
        if job.method == "passage":
            n = questions_for(chunk, settings.tokens_per_question, settings.max_questions)
            prompt = fill_prompt(job.qa_t, text=chunk.text, title=page.title, url=page.url, n=n)
            messages = [{"role": "user", "content": prompt}]
            asks.append((chunk, None, Request(messages, answer_budget(settings, n), settings.temperature)))
            continue
        for fact in select_facts(chunk.text, page.title)[: settings.max_questions]:
            messages = build_question_messages(job.question_ts[fact_lang(fact)], page.title, fact)
            asks.append((chunk, fact, Request(messages, QUESTION_TOKENS, 0.0, ("?", "？"))))
    return asks


def _run_phase(client, requests, settings, policy, stop, report) -> Iterator[tuple[int, str | LLMError]]:
    """Run one phase's requests, counting them (and the tokens the local model writes) in the report."""
    for i, result in run_requests(client, requests, settings.concurrency, policy, stop, heartbeat=1.0):
        if isinstance(result, Heartbeat):
            report.note_tokens(result)
            yield i, result
            continue
        report.requests_done += 1
        yield i, result


def _qa_todo(project, client, job: _Job, todo, report, stop, policy):
    """Process `todo` pages in waves: generate -> filter -> judge -> paraphrase -> write per page."""
    settings = job.settings
    asks_by_page = []
    for page, text, sha in todo:
        asks_by_page.append((page, text, sha, _asks_of(job, page, text, client.count_tokens)))
    report.start_work(
        "sentences" if job.method == "sentence" else "chunks", sum(len(a) for *_, a in asks_by_page)
    )
    yield report
    wave_asks = max(settings.concurrency, getattr(client, "batch_size", 1)) * 4
    pos = 0
    while pos < len(asks_by_page):
        wave: list[dict] = []
        refs: list[tuple[int, Chunk, str | None, Request]] = []
        while pos < len(asks_by_page) and len(refs) < wave_asks:
            page, text, sha, asks = asks_by_page[pos]
            pos += 1
            if not asks:
                append_jsonl(
                    project.qa_dir / "state.jsonl", _state(page, sha, job.version, client, "empty", 0, {})
                )
                report.skipped += 1
                continue
            wave.append(
                {
                    "page": page,
                    "text": text,
                    "sha": sha,
                    "error": None,
                    "pairs": [],
                    "drops": {},
                    "answers": 0,
                }
            )
            refs += [(len(wave) - 1, chunk, fact, request) for chunk, fact, request in asks]

        # 1. ask for pairs (passage) or for the question each fact sentence answers (sentence)
        requests = [request for *_, request in refs]
        for i, result in _run_phase(client, requests, settings, policy, stop, report):
            if isinstance(result, Heartbeat):
                yield report
                continue
            report.units_done += 1
            w, chunk, fact, _ = refs[i]
            item = wave[w]
            check_fatal(result, report)
            if isinstance(result, LLMError):
                item["error"] = item["error"] or result
                yield report
                continue
            item["answers"] += 1
            if fact is not None:
                question = read_question(result)
                reason = check_question(question, fact, item["page"].title + "\n" + item["text"])
                item["sentence"] = True
                if reason == "not_a_question":
                    _count(item, "unparseable")
                    item["sample"] = item.get("sample") or result
                elif reason:
                    _count(item, reason)
                else:
                    item["pairs"].append({"q": question, "a": fact, "chunk": chunk, "variant_of": None})
                yield report
                continue
            parsed = parse_qa_pairs(result)
            if not parsed:
                _count(item, "unparseable")
                item["sample"] = item.get("sample") or result
            for question, answer in parsed:
                if not is_utf8_text(question + answer):  # a "\ud800" escape inside the model's JSON
                    _count(item, "invalid_text")
                elif not is_standalone(question):
                    _count(item, "not_standalone")
                elif not is_grounded(answer, chunk.text, settings.grounding_threshold):
                    _count(item, "ungrounded")
                else:
                    item["pairs"].append({"q": question, "a": answer, "chunk": chunk, "variant_of": None})
            yield report
        if stop is not None and stop.is_set():
            report.stopped = True
            return
        for item in wave:  # near-duplicates within a page (overlapping chunks ask the same thing)
            kept = []
            for p in item["pairs"]:
                if any(is_near_duplicate(p["q"], k["q"]) for k in kept):
                    _count(item, "duplicate")
                else:
                    kept.append(p)
            item["pairs"] = kept

        # 2. optional LLM judge
        if settings.judge:
            refs = [(item, p) for item in wave if item["error"] is None for p in item["pairs"]]
            requests = [
                Request(
                    [
                        {
                            "role": "user",
                            "content": fill_prompt(
                                job.judge_t, text=p["chunk"].text, question=p["q"], answer=p["a"]
                            ),
                        }
                    ],
                    16,
                    0.0,
                )
                for _, p in refs
            ]
            rejected = set()
            for i, result in _run_phase(client, requests, settings, policy, stop, report):
                if isinstance(result, Heartbeat):
                    yield report
                    continue
                item, p = refs[i]
                if isinstance(result, LLMError):
                    _count(item, "judge_failed")
                    rejected.add(id(p))
                elif not judge_says_yes(result):
                    _count(item, "judge_rejected")
                    rejected.add(id(p))
                yield report
            if stop is not None and stop.is_set():
                report.stopped = True
                return
            for item in wave:
                item["pairs"] = [p for p in item["pairs"] if id(p) not in rejected]

        # 3. paraphrase variants, each keeping the numbers, dates and names of its question
        if job.variants > 0:
            refs = [(item, p) for item in wave if item["error"] is None for p in item["pairs"]]
            requests = [
                Request(
                    [{"role": "user", "content": fill_prompt(job.para_t, question=p["q"], k=job.variants)}],
                    32 + 48 * job.variants,
                    0.7,
                )
                for _, p in refs
            ]
            for i, result in _run_phase(client, requests, settings, policy, stop, report):
                if isinstance(result, Heartbeat):
                    yield report
                    continue
                item, p = refs[i]
                if isinstance(result, LLMError):
                    _count(item, "variant_failed")
                    yield report
                    continue
                seen = {normalize_question(x["q"]) for x in item["pairs"]}
                for variant in parse_variants(result)[: job.variants]:
                    variant = read_question(variant)  # a rewording of a question is a question
                    if (
                        not variant
                        or not is_utf8_text(variant)
                        or not _ASKS.search(variant)
                        or normalize_question(variant) in seen
                        or not is_standalone(variant)
                    ):
                        _count(item, "variant_rejected")
                        continue
                    if not keeps_key_terms(p["q"], variant):
                        _count(item, "variant_lost_facts")
                        continue
                    seen.add(normalize_question(variant))
                    item["pairs"].append({"q": variant, "a": p["a"], "chunk": p["chunk"], "variant_of": p})
                yield report
            if stop is not None and stop.is_set():
                report.stopped = True
                return

        for item in wave:
            _finish_page(project, client, item, job.version, report)
        report.pairs = assemble_qa_file(project)
        yield report


def _count(item: dict, reason: str) -> None:
    item["drops"][reason] = item["drops"].get(reason, 0) + 1


def _finish_page(project: Project, client, item: dict, version: str, report: RunReport) -> None:
    page, sha = item["page"], item["sha"]
    state_file = project.qa_dir / "state.jsonl"
    for reason, n in item["drops"].items():
        report.drop(reason, n)
    note = None
    if item["error"] is None and item["drops"].get("unparseable", 0) == item["answers"] > 0:
        sample = " ".join(strip_think(item["sample"]).split())[:120] or "(only <think> reasoning)"
        sample = re.sub(r"#+|={2,}|-{3,}|\*+|_{2,}|`+", " ", sample).strip()  # shown as Markdown: no headings
        if item.get("sentence"):
            # Greedy decoding: a rerun with this model would write the same non-questions, so the page is
            # done with no pairs (counted in the summary), not a failure to retry on every run.
            note = (
                f"no_questions: the model wrote no question for any sentence of this page (e.g. {sample!r}); "
                "the embedded 135M model is English-only: Chinese pages need a bigger local model or an API model"
            )
            report.drop("pages_without_questions")
        else:
            # Not one chunk's answer held a question-answer pair: a failure to retry, not an empty page.
            item["error"] = NoQAError(
                f"the model's answers contained no question-answer pairs (e.g. {sample!r}): check that the "
                "prompt asks for JSON pairs, or use a stronger model"
            )
    if item["error"] is not None:
        err: LLMError = item["error"]
        report.failed += 1
        report.failures[page.id] = f"{err.reason}: {err}"
        append_jsonl(
            state_file, _state(page, sha, version, client, "failed", 0, item["drops"], f"{err.reason}: {err}")
        )
        return
    created = now_iso()
    records = []
    for p in item["pairs"]:
        original = p["variant_of"]
        pair = QAPair(
            id=pair_id(page.url, p["q"]),
            question=p["q"],
            answer=p["a"],
            source_url=page.url,
            title=page.title,
            chunk_id=f"{page.id}#{p['chunk'].index}",
            backend=client.backend,
            model=client.model,
            prompt_version=version,
            created_at=created,
            variant_of=pair_id(page.url, original["q"]) if original else None,
        )
        records.append(json_line(pair.__dict__))
    write_text_atomic(
        project.qa_dir / "pages" / f"{page.id}.jsonl", "\n".join(records) + ("\n" if records else "")
    )
    append_jsonl(state_file, _state(page, sha, version, client, "done", len(records), item["drops"], note))
    report.done += 1


def _state(page, sha, version, client, status, pairs, drops, reason=None) -> dict:
    return {
        "id": page.id,
        "url": page.url,
        "status": status,
        "reason": reason,
        "pairs": pairs,
        "drops": drops,
        "input_sha256": sha,
        "prompt_version": version,
        "backend": client.backend,
        "model": client.model,
        "updated_at": now_iso(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default="demo")
    parser.add_argument(
        "--source", choices=SOURCES, default="auto", help="cleaned text, raw crawl text, or auto"
    )
    parser.add_argument("--chunk-tokens", type=int, default=800)
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="auto",
        help="passage: JSON pairs per chunk; sentence: a question per fact sentence (small local models); "
        "auto: sentence for local models under 1B parameters",
    )
    parser.add_argument(
        "--variants",
        type=int,
        default=None,
        help=f"extra phrasings per question (default {DEFAULT_VARIANTS} for the passage method, 0 for sentence)",
    )
    parser.add_argument(
        "--judge", action="store_true", help="also ask the model whether each answer is supported"
    )
    add_client_args(parser)
    args = parser.parse_args(argv)

    def stage_run(stop):
        project = get_project(args.project)
        prompt = read_prompt_file(args.prompt_file)
        settings = QASettings(
            prompt=prompt,
            prompt_lang=args.prompt_lang,
            source=args.source,
            method=args.method,
            chunk_tokens=args.chunk_tokens,
            variants=args.variants,
            judge=args.judge,
            concurrency=args.concurrency,
            overwrite=args.overwrite,
        )
        return generate_qa(project, client_from_args(args), settings, stop)

    return run_cli(stage_run, args)


if __name__ == "__main__":
    sys.exit(main())
