"""Dataset stage: turn QA pairs into leak-free train/dev/test chat JSONL for fine-tuning.

Reads `data/<project>/qa/qa.jsonl` (or imported files: the seed's `Q：.../A：...` text blocks,
JSONL/JSON with question/answer keys), drops malformed, empty, over-long and duplicate pairs
(counted by reason), splits by source page with a fixed seed so paraphrases of one fact never
sit in both train and test, and replaces `dataset/{train,dev,test}.jsonl`, `stats.json` and a
LLaMA-Factory `dataset_info.json` atomically. Token lengths and the preview use the chosen
model's tokenizer and chat template, exactly as training renders them.

    python -m blocks.dataset --project demo                          # from qa/qa.jsonl, 8:1:1, seed 42
    python -m blocks.dataset --project demo --input old_qa.txt --input more.jsonl --no-qa-file
    python -m blocks.dataset --project demo --split 7:2:1 --seed 7 --system "You are Eastlake's assistant."
    python -m blocks.dataset --project demo --cite-source --model models/smollm2-135m-instruct
    python -m blocks.dataset --project demo --check                  # validate the existing dataset files
    python -m blocks.dataset --project demo --rewordings 0 --no-retrieval   # plain pairs only

Knowledge augmentation (on by default): each pair's question is also asked in a few rewordings
(polite frames, a keyword-only form; `--rewordings N`), and each original pair appears once more
retrieval-aware (RAFT): its question behind the passages the project's retrieval index (blocks.index)
finds for it, the source page's passage among them, so the tuned model learns to answer from pages
and, for a share of pairs whose passages are all taken away, to say that the pages do not say.
Rewordings and retrieval records keep their pair's group, so they sit in the same split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from blocks.index import is_chinese

SPLITS = ("train", "dev", "test")
ROLES = ("system", "user", "assistant")
MAX_PROBLEMS_KEPT = 50  # stats.json lists this many problems; the count covers all of them
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".txt", ".md")
# The seed's LLM wrote one file per page of "Q：..." / "A：..." blocks (full-width or ASCII colon),
# sometimes numbered ("1. Q：", "Q1:"), in Markdown bold ("**Q：**"), or both on one line.
_LEAD = r"^\s*[*#>\-\s]*(?:\d+\s*[.、)）]\s*)?[*\s]*"
_Q_RE = re.compile(_LEAD + r"(?:Q|q|问题|问)\s*\d*\s*[:：]\s*\**\s*(.*)$")
_A_RE = re.compile(_LEAD + r"(?:A|a|答案|答)\s*\d*\s*[:：]\s*\**\s*(.*)$")
_INLINE_A_RE = re.compile(r"\s+\**(?:A|答案|答)\s*\d*\s*[:：]\s*\**\s*")


class DatasetError(ValueError):
    """Input or options the dataset stage cannot use; the message says what to change."""


class DatasetValidationError(DatasetError):
    """Dataset files that break the chat-JSONL contract; each problem names file and line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        shown = "\n".join(problems[:20])
        more = f"\n... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s) in the dataset:\n{shown}{more}")


@dataclass
class QAPair:
    """One question/answer pair plus where it came from."""

    question: str
    answer: str
    source: str = ""  # source page URL (or imported file name); "" when unknown
    title: str = ""
    origin: str = ""  # "file:line" the pair was read from, for messages and provenance
    id: str = ""
    chunk_id: str = ""
    variant_of: str = ""  # id of the pair this one rewords (QA generation's paraphrases)
    kind: str = "pair"  # "pair", "reworded" (made here), "raft" (question behind retrieved passages)


@dataclass
class DatasetOptions:
    """Everything that decides the dataset's content; stored in stats.json for reproducibility."""

    ratios: tuple[float, float, float] = (8.0, 1.0, 1.0)
    seed: int = 42
    system_prompt: str = ""
    cite_source: bool = False
    max_question_chars: int = 1000
    max_answer_chars: int = 4000
    max_input_length: int = 512  # tokens of system+user turns (the config's max input length)
    max_output_length: int = 512  # tokens of the assistant turn (the config's max output length)
    rewordings: int = 3  # extra phrasings of each question made by rule (0 = none)
    retrieval: bool = True  # add retrieval-aware (RAFT) records built from the project's index
    raft_negatives: float = 0.0  # share of RAFT records whose passages lack the answer ("pages do not say")


@dataclass
class CleanResult:
    """Pairs that survived cleaning and how many were dropped for each reason."""

    kept: list[QAPair]
    drops: dict[str, int]


@dataclass
class DatasetReport:
    """What a build produced: where, the stats written to stats.json, the rendered preview."""

    dataset_dir: Path
    stats: dict
    preview: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- pure core: parsing


def parse_split_ratios(text: str) -> tuple[float, float, float]:
    """Parse 'train:dev:test' such as '8:1:1' or '0.8,0.1,0.1'."""
    parts = [p for p in re.split(r"[:,/\s]+", (text or "").strip()) if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    # NaN fails every comparison; an infinite part (or sum, 1e308:1e308:1) leaves no proportion to split by
    if len(values) != 3 or not all(v >= 0 for v in values) or not sum(values) < float("inf"):
        raise DatasetError(
            f"Split {text!r} is not three non-negative numbers train:dev:test (finite: no nan or inf); "
            "write e.g. 8:1:1."
        )
    if values[0] <= 0:
        raise DatasetError(f"Split {text!r} gives train nothing; the first number must be above 0.")
    return values  # type: ignore[return-value]


def parse_qa_jsonl(text: str, name: str) -> tuple[list[QAPair], list[str]]:
    """Read question/answer objects, one per line (or one JSON array); problems name file and line."""
    pairs: list[QAPair] = []
    problems: list[str] = []
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            return [], [f"{name}:{exc.lineno}: not valid JSON ({exc.msg})"]
        except RecursionError:
            return [], [f"{name}:1: JSON nested too deeply to be a QA list"]
        if not isinstance(items, list):
            return [], [f"{name}:1: expected a list of objects with 'question' and 'answer'"]
        numbered = [(f"{name}[{i}]", item) for i, item in enumerate(items)]
    else:
        numbered = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((f"{name}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as exc:
                problems.append(f"{name}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                problems.append(f"{name}:{lineno}: JSON nested too deeply")
    for where, obj in numbered:
        pair = _pair_from_object(obj, where, problems)
        if pair is not None:
            pairs.append(pair)
    return pairs, problems


def _pair_from_object(obj: object, where: str, problems: list[str]) -> QAPair | None:
    """A QAPair from one decoded JSON value, or None with the reason appended to problems."""
    if not isinstance(obj, dict):
        problems.append(f"{where}: expected an object with 'question' and 'answer', got {type(obj).__name__}")
        return None
    missing = [k for k in ("question", "answer") if k not in obj]
    if missing:
        problems.append(f"{where}: missing {' and '.join(repr(k) for k in missing)}")
        return None
    for key in ("question", "answer"):
        if not isinstance(obj[key], str):
            problems.append(f"{where}: {key!r} must be a string, got {type(obj[key]).__name__}")
            return None
    source = obj.get("source_url") or obj.get("url") or obj.get("source") or ""
    return QAPair(
        question=obj["question"],
        answer=obj["answer"],
        source=str(source),
        title=str(obj.get("title") or ""),
        origin=where,
        id=str(obj.get("id") or ""),
        chunk_id=str(obj.get("chunk_id") or ""),
        variant_of=str(obj.get("variant_of") or ""),
    )


def parse_qa_text(text: str, name: str) -> tuple[list[QAPair], list[str]]:
    """Read the seed's `Q：...` / `A：...` blocks; lines that follow continue the current field."""
    pairs: list[QAPair] = []
    problems: list[str] = []
    question: list[str] | None = None
    answer: list[str] | None = None
    start = 0

    def flush() -> None:
        if question is None:
            return
        if answer is None:
            problems.append(f"{name}:{start}: question without an 'A：' answer")
            return
        pairs.append(
            QAPair(
                "\n".join(question).strip(), "\n".join(answer).strip(), source=name, origin=f"{name}:{start}"
            )
        )

    for lineno, line in enumerate(text.splitlines(), start=1):
        q, a = _Q_RE.match(line), _A_RE.match(line)
        if q:
            flush()
            inline = _INLINE_A_RE.split(q.group(1), maxsplit=1)  # "Q：... A：..." on one line
            question, start = [inline[0]], lineno
            answer = [inline[1]] if len(inline) == 2 else None
        elif a:
            if question is None or answer is not None:
                flush()
                problems.append(f"{name}:{lineno}: answer without a preceding 'Q：' question")
                question, answer = None, None
                continue
            answer = [a.group(1)]
        elif line.strip():
            if answer is not None:
                answer.append(line.strip())
            elif question is not None:
                question.append(line.strip())
            else:
                problems.append(f"{name}:{lineno}: text outside a Q：/A： block")
    flush()
    return pairs, problems


# ---------------------------------------------------------------- pure core: cleaning and splitting


def normalise_text(text: str) -> str:
    """Compare form: NFKC, case-folded, letters and digits only (full-width, spaces, punctuation ignored)."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if ch.isalnum())


def group_of(pair: QAPair) -> str:
    """The split unit: the source page, or for pairs without one the normalised question itself."""
    return pair.source or "question:" + normalise_text(pair.question)


def clean_pairs(pairs: Iterable[QAPair], options: DatasetOptions) -> CleanResult:
    """Drop empty, over-long and duplicate pairs (first one wins), counting each reason.

    A question already asked on another page is dropped too: kept, it could land in train on one page
    and in test on the other, and it teaches two answers to one question.
    """
    drops: Counter[str] = Counter()
    kept: list[QAPair] = []
    exact: set[tuple[str, str]] = set()
    normalised: set[tuple[str, str]] = set()
    question_group: dict[str, str] = {}
    for pair in pairs:
        question, answer = pair.question.strip(), pair.answer.strip()
        norm_q, norm_a = normalise_text(question), normalise_text(answer)
        if not question:
            drops["empty_question"] += 1
        elif not answer:
            drops["empty_answer"] += 1
        elif len(question) > options.max_question_chars:
            drops["question_too_long"] += 1
        elif len(answer) > options.max_answer_chars:
            drops["answer_too_long"] += 1
        elif (question, answer) in exact:
            drops["duplicate_exact"] += 1
        elif (norm_q, norm_a) in normalised:
            drops["duplicate_normalised"] += 1
        elif question_group.setdefault(norm_q, group_of(pair)) != group_of(pair):
            drops["same_question_other_page"] += 1
        else:
            exact.add((question, answer))
            normalised.add((norm_q, norm_a))
            kept.append(QAPair(**{**asdict(pair), "question": question, "answer": answer}))
    return CleanResult(kept, dict(drops))


# ---------------------------------------------------------------- pure core: augmentation

_EN_FRAMES = (
    "Can you tell me {lower}",
    "I'd like to know: {q}",
    "Quick question - {lower}",
    "{q} Thanks!",
    "Hi, {lower}",
)
_ZH_FRAMES = ("请问，{q}", "我想知道：{q}", "你好，{q}", "{q}谢谢！", "问一下，{q}")
_KEYWORD_STOP = set(  # question words stay: "when" and "how much" are what is asked
    "a an the of to in on at for and or is are was were be been by with as it its this that from do does did "
    "can could will would should i me my we our you your there their has have had any".split()
)


def keyword_question(question: str) -> str:
    """The question as a student types it into a search box: content words only ('library Saturday hours?')."""
    words = re.findall(r"[\w'’:.\-]+", question.rstrip("?？ "))
    kept = [w for w in words if w.lower() not in _KEYWORD_STOP]
    return " ".join(kept) + "?" if len(kept) >= 2 else ""


def reword_question(question: str, n: int, seed: int = 0) -> list[str]:
    """Up to n rule-made rewordings of a question (frames and a keyword form), deterministic per question.

    They teach the tuned model that the same fact is asked in many ways; they never change a fact,
    since the question's own words are kept.
    """
    if n <= 0:
        return []
    q = question.strip()
    if is_chinese(q):
        candidates = [f.format(q=q) for f in _ZH_FRAMES]
    else:
        lower = q[0].lower() + q[1:] if q[:2] != q[:2].upper() else q
        candidates = [f.format(q=q, lower=lower) for f in _EN_FRAMES]
        keyword = keyword_question(q)
        if keyword:
            candidates.insert(0, keyword)
    rng = random.Random(f"{seed}\n{q}")
    head, rest = candidates[:1], candidates[1:]
    rng.shuffle(rest)
    out = []
    seen = {normalise_text(q)}
    for c in head + rest:
        if normalise_text(c) not in seen:
            seen.add(normalise_text(c))
            out.append(c)
        if len(out) == n:
            break
    return out


def augment_pairs(pairs: list[QAPair], options: DatasetOptions) -> list[QAPair]:
    """The pairs plus `options.rewordings` rule-made rewordings of each question (same answer and source)."""
    out: list[QAPair] = []
    asked = {normalise_text(p.question) for p in pairs}
    for pair in pairs:
        out.append(pair)
        for text in reword_question(pair.question, options.rewordings, options.seed):
            if normalise_text(text) in asked:
                continue
            asked.add(normalise_text(text))
            out.append(
                QAPair(
                    **{
                        **asdict(pair),
                        "question": text,
                        "variant_of": pair.id or pair.question,
                        "kind": "reworded",
                    }
                )
            )
    return out


def rewording_counts(records: list[dict]) -> dict:
    """How many rewordings each fact of these chat records has (a fact = an original pair; rewordings and
    QA generation's paraphrases name it in meta.variant_of)."""
    facts: Counter[str] = Counter()
    for r in records:
        meta = r.get("meta", {})
        if meta.get("kind", "pair") == "pair" and not meta.get("variant_of"):
            facts[meta.get("id") or _user_text(r)] += 0
    for r in records:
        key = r.get("meta", {}).get("variant_of")
        if key and key in facts and r["meta"].get("kind") != "raft":
            facts[key] += 1
    values = list(facts.values())
    histogram = Counter(values)
    return {
        "facts": len(values),
        "min": min(values) if values else 0,
        "mean": round(sum(values) / len(values), 2) if values else 0,
        "max": max(values) if values else 0,
        "facts_with_n_rewordings": {str(k): histogram[k] for k in sorted(histogram)},
    }


def raft_pairs(pairs: list[QAPair], index, options: DatasetOptions) -> list[tuple[QAPair, list]]:
    """(pair, passages) training records that teach reading: each original pair behind the passages
    retrieval finds for it, and each fact's first rewording behind the passages found when the fact's own
    Q/A passage is withheld (so the answer must be read from the page, as for a fact no pair states).
    The source page's best-supporting passage is added when the search missed it (a record without it
    is dropped), and the passages are shuffled (seeded) so that the answer is not always in the first.
    For a seeded share (`raft_negatives`) of the originals every passage of the source page is withheld
    and the answer becomes 'the pages do not say'."""
    from blocks.index import NOT_FOUND_EN, NOT_FOUND_ZH, TOP_K, Hit, qa_source_key, support_share

    rng = random.Random(options.seed)
    originals = {p.id or p.question: p for p in pairs if p.kind == "pair" and not p.variant_of}
    out = []
    read_from_page: set[str] = set()
    for pair in pairs:
        if pair.kind == "pair" and not pair.variant_of:
            fact, withheld = pair, set()
        elif (
            pair.kind == "reworded" and pair.variant_of in originals and pair.variant_of not in read_from_page
        ):
            read_from_page.add(pair.variant_of)
            fact = originals[pair.variant_of]
            withheld = {qa_source_key(fact.source, fact.question)}
        else:
            continue
        if (
            not withheld
            and options.raft_negatives > 0
            and rng.random() < options.raft_negatives
            and pair.source
        ):
            sources = {p.source for p in index.passages if p.url == pair.source}
            hits = index.search(pair.question, TOP_K, exclude=sources)
            if hits:
                answer = NOT_FOUND_ZH if is_chinese(pair.question) else NOT_FOUND_EN
                out.append((QAPair(**{**asdict(pair), "answer": answer, "kind": "raft"}), hits))
                continue
        hits = index.search(pair.question, TOP_K, exclude=withheld or None)
        own = [
            h
            for h in hits
            if h.passage.url == pair.source and support_share(pair.answer, h.passage.text) >= 0.5
        ]
        if not own and pair.source:
            candidates = [(support_share(pair.answer, p.text), p) for p in index.passages_of_url(pair.source)]
            candidates = [c for c in candidates if c[0] >= 0.5 and c[1].source not in withheld]
            if candidates:
                gold = max(candidates, key=lambda c: c[0])[1]
                hits = [h for h in hits if h.passage.id != gold.id][: TOP_K - 1] + [Hit(gold, 0.0)]
            elif withheld:
                continue  # only the withheld pair states this fact: nothing to read it from
        if not hits:
            continue
        rng.shuffle(hits)
        out.append((QAPair(**{**asdict(pair), "kind": "raft"}), hits))
    return out


def assign_splits(
    group_sizes: dict[str, int], ratios: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Map each group to a split: seeded shuffle, then each group to the split furthest below its target.

    Every split with a non-zero ratio gets at least one group; too few groups is a DatasetError.
    """
    active = [s for s, r in zip(SPLITS, ratios, strict=True) if r > 0]
    if len(group_sizes) < len(active):
        raise DatasetError(
            f"Only {len(group_sizes)} source group(s) (pages) for a {'/'.join(active)} split: "
            f"at least {len(active)} are needed so that no page sits in two splits. "
            "Generate QA pairs from more pages, or set the dev and/or test ratio to 0."
        )
    names = sorted(group_sizes)
    random.Random(seed).shuffle(names)
    total = sum(group_sizes.values())
    ratio_sum = sum(ratios)
    targets = {s: total * r / ratio_sum for s, r in zip(SPLITS, ratios, strict=True)}
    counts = dict.fromkeys(SPLITS, 0)
    members: dict[str, list[str]] = {s: [] for s in SPLITS}
    for name in names:
        split = max(active, key=lambda s: (targets[s] - counts[s], -SPLITS.index(s)))
        members[split].append(name)
        counts[split] += group_sizes[name]
    # Small data: the greedy pass can leave dev or test empty; lend them the smallest group of the
    # split with the most groups (it has at least two, since there are enough groups overall).
    for split in active:
        if not members[split]:
            donor = max(active, key=lambda s: len(members[s]))
            smallest = min(members[donor], key=lambda g: (group_sizes[g], g))
            members[donor].remove(smallest)
            members[split].append(smallest)
    return {g: s for s in SPLITS for g in members[s]}


def is_url(text: str) -> bool:
    """True for http(s) addresses, which can be cited; imported file names cannot."""
    return text.startswith(("http://", "https://"))


def build_record(pair: QAPair, group: str, options: DatasetOptions, passages: list | None = None) -> dict:
    """The chat record training reads: messages plus provenance in meta.

    With `passages` (retrieval hits), the user turn is the grounded question chat and serve send.
    """
    answer = pair.answer
    if options.cite_source and is_url(pair.source):
        answer = f"{answer}\n\nSource: {pair.source}"
    messages = (
        [{"role": "system", "content": options.system_prompt.strip()}]
        if options.system_prompt.strip()
        else []
    )
    user = pair.question
    if passages is not None:
        from blocks.index import grounded_question

        user = grounded_question(pair.question, passages)
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    meta = {
        "id": pair.id,
        "source": pair.source,
        "title": pair.title,
        "chunk_id": pair.chunk_id,
        "origin": pair.origin,
        "group": group,
        "kind": pair.kind,
    }
    if pair.variant_of:
        meta["variant_of"] = pair.variant_of
    if passages is not None:
        meta["passages"] = [h.passage.url for h in passages]
    return {"messages": messages, "meta": meta}


def split_records(pairs: list[QAPair], options: DatasetOptions, index=None) -> dict[str, list[dict]]:
    """Group, split and render the cleaned pairs into chat records per split (input order kept).

    Train also gets the rewordings of its pairs and, with a retrieval `index`, their RAFT records;
    dev and test keep the pairs as written (what evaluation asks).
    """
    groups = [group_of(p) for p in pairs]
    sizes = Counter(groups)
    where = assign_splits(dict(sizes), options.ratios, options.seed)
    out: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for pair, group in zip(pairs, groups, strict=True):
        out[where[group]].append(build_record(pair, group, options))
    train = augment_pairs([p for p, g in zip(pairs, groups, strict=True) if where[g] == "train"], options)
    for pair in train:
        if pair.kind == "reworded":
            out["train"].append(build_record(pair, group_of(pair), options))
    if index is not None:
        for pair, hits in raft_pairs(train, index, options):
            out["train"].append(build_record(pair, group_of(pair), options, hits))
    return out


def check_records(records: list[dict], name: str) -> list[str]:
    """Contract problems of chat records, each as 'name:line: what is wrong'."""
    problems: list[str] = []
    for lineno, record in enumerate(records, start=1):
        where = f"{name}:{lineno}"
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or len(messages) < 2:
            problems.append(f"{where}: needs a 'messages' list with a user and an assistant turn")
            continue
        roles = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                problems.append(f"{where}: message {i} needs a role of {'/'.join(ROLES)}")
                break
            content = message.get("content")
            if not isinstance(content, str) or not content.strip():
                problems.append(f"{where}: message {i} ({message['role']}) has empty content")
                break
            roles.append(message["role"])
        else:
            turns = roles[1:] if roles[0] == "system" else roles
            expected = ["user", "assistant"] * (len(turns) // 2)
            if turns != expected or not turns:
                problems.append(
                    f"{where}: turns must alternate user/assistant after an optional system, got {roles}"
                )
        if "meta" in record and not isinstance(record["meta"], dict):
            problems.append(f"{where}: 'meta' must be an object")
    return problems


def find_leaks(splits: dict[str, list[dict]]) -> list[str]:
    """Questions of dev/test that also appear (normalised) in train: a leak that inflates evaluation."""
    train = {normalise_text(_user_text(r)) for r in splits.get("train", [])}
    leaks = []
    for split in ("dev", "test"):
        for lineno, record in enumerate(splits.get(split, []), start=1):
            if normalise_text(_user_text(record)) in train:
                leaks.append(f"{split}.jsonl:{lineno}: the same question is also in train.jsonl")
    return leaks


def _user_text(record: dict) -> str:
    return next((m["content"] for m in record["messages"] if m["role"] == "user"), "")


def summarise_lengths(values: list[int]) -> dict:
    """min/mean/percentiles/max of token counts (empty list gives zeros)."""
    if not values:
        return {"min": 0, "mean": 0.0, "p50": 0, "p90": 0, "p99": 0, "max": 0}
    ordered = sorted(values)

    def pct(p: float) -> int:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    mean = round(sum(ordered) / len(ordered), 1)
    return {
        "min": ordered[0],
        "mean": mean,
        "p50": pct(0.5),
        "p90": pct(0.9),
        "p99": pct(0.99),
        "max": ordered[-1],
    }


def count_pairs_per_source(pairs: list[QAPair]) -> dict[str, int]:
    """Pairs per source page, most first ('(no source)' for pairs without one)."""
    counts = Counter(p.source or "(no source)" for p in pairs)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def make_dataset_info(project: str) -> dict:
    """LLaMA-Factory dataset_info.json entries for the three files (sharegpt format, OpenAI-style roles)."""
    tags = {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    }
    return {
        f"{project}_{split}": {
            "file_name": f"{split}.jsonl",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": tags,
        }
        for split in SPLITS
    }


# ---------------------------------------------------------------- I/O: reading inputs


def read_text_file(path: Path) -> str:
    """Decode a file as UTF-8 (BOM tolerated), falling back to GB18030 for older Chinese Windows files."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read {path}: {exc.strerror or exc}.") from exc
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Windows Notepad's "Unicode"
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise DatasetError(
                f"{path.name} is neither UTF-8 nor GB18030 text (it starts like UTF-16 but is not): "
                "save it as UTF-8."
            ) from exc
    if b"\x00" in data[:8192]:
        raise DatasetError(f"{path.name} is a binary file, not text: import .jsonl/.json/.txt QA files.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path.name} is neither UTF-8 nor GB18030 text: save it as UTF-8.") from exc


def expand_inputs(paths: list[Path]) -> list[Path]:
    """Files as given; a folder (the seed kept one QA .txt per page in a folder) becomes its files."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
            if not found:
                raise DatasetError(f"Folder {path} has no .jsonl/.json/.txt/.md files to import.")
            out += found
        else:
            out.append(path)
    return out


def read_pairs(paths: list[Path]) -> tuple[list[QAPair], list[str]]:
    """Read every input file by its type; malformed entries become problems naming file and line."""
    pairs: list[QAPair] = []
    problems: list[str] = []
    for path in expand_inputs(paths):
        if not path.is_file():
            raise DatasetError(f"Input file {path} does not exist.")
        suffix = path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise DatasetError(
                f"{path.name}: unsupported file type {suffix or '(none)'}; use .jsonl/.json with "
                "'question' and 'answer' keys, or a .txt file of Q：/A： blocks."
            )
        text = read_text_file(path)
        parse = parse_qa_jsonl if suffix in (".jsonl", ".json") else parse_qa_text
        got, bad = parse(text, path.name)
        pairs += got
        problems += bad
    return pairs, problems


def import_files(project_dir: Path, paths: list[Path]) -> list[Path]:
    """Copy uploaded files into dataset/imports/ so a later rebuild (UI or CLI) can read them again."""
    target = Path(project_dir) / "dataset" / "imports"
    target.mkdir(parents=True, exist_ok=True)
    copied = []
    for path in paths:
        name = Path(path).name
        if name in ("", ".", ".."):
            raise DatasetError(f"Cannot import {path}: it has no file name.")
        dest = target / name  # name only: an upload can never write outside imports/
        if Path(path).resolve() != dest.resolve():
            shutil.copyfile(path, dest)
        copied.append(dest)
    return copied


# ---------------------------------------------------------------- I/O: tokenizer


def load_tokenizer(model_path: str | Path):
    """The model's tokenizer, which must carry a chat template (that is what training renders)."""
    folder = Path(model_path)
    if not (folder / "tokenizer_config.json").is_file():
        raise DatasetError(
            f"No tokenizer in {folder}: choose a model folder with tokenizer files "
            "(the embedded one is prepared by `python -m blocks.models`)."
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # JSONDecodeError is a ValueError
        raise DatasetError(
            f"The tokenizer in {folder} cannot be loaded ({exc.__class__.__name__}: {str(exc)[:200]}): "
            "choose a complete model folder."
        ) from exc
    if not tokenizer.chat_template:
        raise DatasetError(
            f"The tokenizer in {folder} has no chat template: choose an instruct/chat model, "
            "since training renders every record through that template."
        )
    return tokenizer


def render_record(record: dict, tokenizer) -> str:
    """The exact text training sees for one record (the chat template applied to all turns)."""
    return tokenizer.apply_chat_template(record["messages"], tokenize=False)


def measure_tokens(records: list[dict], tokenizer) -> list[tuple[int, int]]:
    """(prompt tokens, answer tokens) per record, counted the way finetune/train.py encodes them.

    The prompt is the template's rendering up to the generation header; the answer is the rest of the
    full rendering (end-of-turn token included). Rendering is per record (Jinja), tokenising one
    batched call, which the fast tokenizer spreads over threads.
    """
    if not records:
        return []
    from finetune import data  # the trainer's own split, so the counts cannot drift from training

    prompts, answers = [], []
    for record in records:
        try:
            prompt, answer = data.split_prompt_answer(record["messages"], tokenizer)
        except data.DatasetError as exc:
            raise DatasetError(str(exc)) from exc
        prompts.append(prompt)
        answers.append(answer)
    ids = tokenizer(prompts + answers, add_special_tokens=False)["input_ids"]
    n = len(records)
    return [(len(ids[i]), len(ids[n + i])) for i in range(n)]


def compute_token_stats(splits: dict[str, list[dict]], tokenizer, options: DatasetOptions) -> dict:
    """Token-length distribution and how many records the configured max lengths would truncate."""
    per_split = {s: measure_tokens(recs, tokenizer) for s, recs in splits.items()}
    every = [x for lengths in per_split.values() for x in lengths]
    truncated = {}
    for split, lengths in per_split.items():
        inputs = sum(1 for p, _ in lengths if p > options.max_input_length)
        outputs = sum(1 for _, a in lengths if a > options.max_output_length)
        either = sum(1 for p, a in lengths if p > options.max_input_length or a > options.max_output_length)
        truncated[split] = {"input": inputs, "output": outputs, "any": either}
    return {
        "prompt": summarise_lengths([p for p, _ in every]),
        "answer": summarise_lengths([a for _, a in every]),
        "total": summarise_lengths([p + a for p, a in every]),
        "max_input_length": options.max_input_length,
        "max_output_length": options.max_output_length,
        "truncated": truncated,
    }


# ---------------------------------------------------------------- I/O: writing and checking


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to a temp file beside `path`, then rename over it (never a half-written file)."""
    write_all_atomic(path.parent, {path.name: text})


def write_all_atomic(folder: Path, files: dict[str, str]) -> None:
    """Write every file to a temp file first and rename only when all are on disk.

    A full disk then fails before any rename: the previous train/dev/test stay together, never a new
    train beside an old test (which could leak test questions into training). Raises DatasetError.
    """
    folder = Path(folder)
    tmps: dict[Path, Path] = {}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            tmp = folder / f".{name}.{os.getpid()}.tmp"
            tmps[tmp] = folder / name
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in tmps.items():
            os.replace(tmp, path)
    except OSError as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise DatasetError(
            f"Cannot write the dataset to {folder}: {exc.strerror or exc}. The previous dataset files are "
            "unchanged; free some disk space (or fix the folder's permissions) and build again."
        ) from exc


def to_jsonl(records: list[dict]) -> str:
    """JSON lines, UTF-8 readable (Chinese not escaped)."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def file_sha256(path: Path) -> str:
    """Content hash of an input, recorded so a dataset can be traced to exactly what built it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_dataset(dataset_dir: Path) -> dict[str, list[dict]]:
    """Read train/dev/test records; a line that is not JSON raises with file and line."""
    splits: dict[str, list[dict]] = {}
    problems: list[str] = []
    for split in SPLITS:
        path = Path(dataset_dir) / f"{split}.jsonl"
        if path.is_dir():
            raise DatasetError(f"{path} is a folder, not a file: remove it and build the dataset again.")
        if not path.is_file():
            raise DatasetError(
                f"{path} is missing: build the dataset first (tab 5, or python -m blocks.dataset)."
            )
        records = []
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            problems.append(f"{path.name}: not UTF-8 (byte {exc.start}): rebuild the dataset")
            continue
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                problems.append(f"{path.name}:{lineno}: empty line")
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                problems.append(f"{path.name}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                problems.append(f"{path.name}:{lineno}: JSON nested too deeply")
        splits[split] = records
    if problems:
        raise DatasetValidationError(problems)
    return splits


def validate_dataset(dataset_dir: Path) -> dict[str, int]:
    """Check the dataset files against the contract (and for train/test leaks); returns record counts."""
    splits = read_dataset(dataset_dir)
    problems = []
    for split, records in splits.items():
        problems += check_records(records, f"{split}.jsonl")
    if not splits["train"]:
        problems.append("train.jsonl: empty; training needs at least one record")
    if not problems:
        problems += find_leaks(splits)
    if problems:
        raise DatasetValidationError(problems)
    return {s: len(r) for s, r in splits.items()}


def check_options(options: DatasetOptions) -> None:
    """Refuse limits that would drop or truncate everything."""
    for name in ("max_question_chars", "max_answer_chars", "max_input_length", "max_output_length"):
        if getattr(options, name) < 1:
            raise DatasetError(f"{name} is {getattr(options, name)}: it must be at least 1.")
    if not 0 <= options.rewordings <= 10:
        raise DatasetError(f"rewordings is {options.rewordings}: use 0 (none) to 10.")
    if not 0 <= options.raft_negatives <= 0.5:  # NaN fails both comparisons too
        raise DatasetError(f"raft_negatives is {options.raft_negatives}: use a share from 0 to 0.5.")
    parse_split_ratios(":".join(str(r) for r in options.ratios))


def _project_index(project_dir: Path):
    """(index, note): the project's retrieval index, refreshed first; (None, why) when there is none."""
    from blocks.index import RetrievalError, SearchIndex, build_index, read_passages
    from blocks.workspace import Project

    project = Project(Path(project_dir))
    try:
        build_index(project)
    except RetrievalError as exc:
        return None, f"off: {exc}"
    return SearchIndex(read_passages(project)), None


def build_dataset(
    project_dir: Path,
    inputs: list[Path] | None = None,
    options: DatasetOptions | None = None,
    model_path: str | Path | None = None,
    on_progress: Callable[[float, str], None] | None = None,
    preview_count: int = 5,
) -> DatasetReport:
    """Read, clean, split and write the project's dataset; inputs default to qa/qa.jsonl.

    With `model_path`, token lengths and the preview use that model's tokenizer and chat template.
    """
    options = options or DatasetOptions()
    check_options(options)
    progress = on_progress or (lambda _f, _m: None)
    project_dir = Path(project_dir)
    qa_file = project_dir / "qa" / "qa.jsonl"
    paths = [Path(p) for p in inputs] if inputs else [qa_file]
    if qa_file.is_dir():
        raise DatasetError(f"{qa_file} is a folder, not a file: move it away and run QA generation again.")
    if not qa_file.is_file() and qa_file.resolve() in {p.resolve() for p in paths}:
        raise DatasetError(
            f"No QA pairs: {qa_file} does not exist. Run QA generation (tab 4) first, or import "
            "a Q：/A： text file or a JSONL file with 'question' and 'answer' keys."
        )
    progress(0.05, "reading")
    pairs, problems = read_pairs(paths)
    cleaned = clean_pairs(pairs, options)
    drops = {"malformed": len(problems), **cleaned.drops} if problems else dict(cleaned.drops)
    if not cleaned.kept:
        hint = f" First problem: {problems[0]}" if problems else ""
        if not pairs and not problems:
            hint = " The input is empty: it holds no question/answer entries."
        if {"question_too_long", "answer_too_long"} & drops.keys():
            hint += (
                f" Limits: questions up to {options.max_question_chars} and answers up to "
                f"{options.max_answer_chars} characters (raise them in Options or with --max-answer-chars)."
            )
        raise DatasetError(
            f"No usable QA pairs in {', '.join(p.name for p in paths)} (dropped: {drops or 'none read'}).{hint}"
        )
    index, index_note = None, None
    if options.retrieval:
        progress(0.1, "retrieval index")
        index, index_note = _project_index(project_dir)
    progress(0.2, "splitting")
    splits = split_records(cleaned.kept, options, index)
    record_problems = [p for s in SPLITS for p in check_records(splits[s], f"{s}.jsonl")]
    if record_problems:
        raise DatasetValidationError(record_problems)  # a bug here, not bad input: never write it
    tokenizer = None
    token_stats = None
    if model_path:
        progress(0.3, "loading tokenizer")
        tokenizer = load_tokenizer(model_path)
        progress(0.45, "counting tokens")
        token_stats = compute_token_stats(splits, tokenizer, options)
    stats = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [{"file": str(p), "sha256": file_sha256(p)} for p in expand_inputs(paths)],
        "options": {**asdict(options), "ratios": list(options.ratios)},
        "model": str(model_path) if model_path else None,
        "read": len(pairs) + len(problems),
        "kept": len(cleaned.kept),
        "drops": drops,
        "problem_count": len(problems),
        "problems": problems[:MAX_PROBLEMS_KEPT],
        "splits": {
            s: {"records": len(splits[s]), "groups": len({r["meta"]["group"] for r in splits[s]})}
            for s in SPLITS
        },
        "pairs_per_source": count_pairs_per_source(cleaned.kept),
        "records_by_kind": {
            s: dict(Counter(r["meta"].get("kind", "pair") for r in splits[s])) for s in SPLITS
        },
        "rewordings": rewording_counts(splits["train"]),
        "retrieval": index_note or ("on" if index is not None else "off"),
        "cited": sum(1 for p in cleaned.kept if options.cite_source and is_url(p.source)),
        "tokens": token_stats,
        "llamafactory_datasets": list(make_dataset_info(project_dir.name)),
    }
    progress(0.8, "writing")
    out = project_dir / "dataset"
    files = {f"{split}.jsonl": to_jsonl(splits[split]) for split in SPLITS}
    files["dataset_info.json"] = json.dumps(make_dataset_info(project_dir.name), indent=2) + "\n"
    files["stats.json"] = json.dumps(stats, ensure_ascii=False, indent=2) + "\n"
    write_all_atomic(out, files)
    validate_dataset(out)
    preview = []
    if tokenizer is not None:
        preview = [render_record(r, tokenizer) for r in splits["train"][:preview_count]]
    progress(1.0, "done")
    return DatasetReport(out, stats, preview)


# ---------------------------------------------------------------- CLI


def format_summary(report: DatasetReport) -> str:
    """A few plain lines for the terminal."""
    stats = report.stats
    lines = [f"dataset written to {report.dataset_dir}"]
    lines.append(
        "splits: "
        + ", ".join(f"{s} {v['records']} ({v['groups']} groups)" for s, v in stats["splits"].items())
    )
    lines.append(f"read {stats['read']}, kept {stats['kept']}; dropped: {stats['drops'] or 'none'}")
    rw = stats.get("rewordings") or {}
    if rw.get("facts"):
        lines.append(
            f"train: {rw['facts']} facts, rewordings per fact min {rw['min']} / mean {rw['mean']} / max {rw['max']}; "
            f"records by kind {stats['records_by_kind']['train']}; retrieval {stats.get('retrieval')}"
        )
    for problem in stats["problems"][:10]:
        lines.append(f"  problem: {problem}")
    tokens = stats["tokens"]
    if tokens:
        total = tokens["total"]
        lines.append(f"tokens per record: p50 {total['p50']}, p90 {total['p90']}, max {total['max']}")
        lines.append(
            f"truncated at input {tokens['max_input_length']} / output {tokens['max_output_length']}: "
            + ", ".join(f"{s} {v['any']}" for s, v in tokens["truncated"].items())
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from blocks.models import default_model_path
    from blocks.workspace import WorkspaceError, get_project

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--project", default="demo", help="project under data/ (default demo)")
    parser.add_argument(
        "--input",
        action="append",
        type=Path,
        default=[],
        help="file or folder to import (.jsonl/.json/.txt/.md); repeatable",
    )
    parser.add_argument(
        "--no-qa-file", action="store_true", help="with --input: do not also read qa/qa.jsonl"
    )
    parser.add_argument("--split", default="8:1:1", help="train:dev:test ratios (default 8:1:1)")
    parser.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    parser.add_argument("--system", default="", help="system prompt put first in every record")
    parser.add_argument("--cite-source", action="store_true", help='end answers with "Source: <url>"')
    parser.add_argument(
        "--model", default=default_model_path(), help="model whose tokenizer/template is used"
    )
    parser.add_argument("--max-input-length", type=int, default=512, help="prompt tokens before truncation")
    parser.add_argument("--max-output-length", type=int, default=512, help="answer tokens before truncation")
    parser.add_argument("--max-question-chars", type=int, default=1000, help="longer questions are dropped")
    parser.add_argument("--max-answer-chars", type=int, default=4000, help="longer answers are dropped")
    parser.add_argument(
        "--rewordings", type=int, default=3, help="rule-made rewordings per question in train (default 3)"
    )
    parser.add_argument(
        "--no-retrieval", action="store_true", help="no retrieval-aware (RAFT) records in train"
    )
    parser.add_argument(
        "--raft-negatives",
        type=float,
        default=0.0,
        help="share of RAFT records whose passages lack the answer, taught to say the pages do not say "
        "(default 0: with the embedded model 0.1 made it refuse 6 of 20 answerable questions)",
    )
    parser.add_argument(
        "--preview", type=int, default=0, help="print this many records as training sees them"
    )
    parser.add_argument("--check", action="store_true", help="only validate the existing dataset files")
    args = parser.parse_args(argv)
    try:
        project = get_project(args.project)
        if args.check:
            counts = validate_dataset(project.dataset_dir)
            print("dataset is valid: " + ", ".join(f"{s} {n}" for s, n in counts.items()))
            return 0
        inputs = list(args.input)
        if inputs and not args.no_qa_file and project.qa_file.is_file():
            inputs.insert(0, project.qa_file)
        options = DatasetOptions(
            ratios=parse_split_ratios(args.split),
            seed=args.seed,
            system_prompt=args.system,
            cite_source=args.cite_source,
            max_question_chars=args.max_question_chars,
            max_answer_chars=args.max_answer_chars,
            max_input_length=args.max_input_length,
            max_output_length=args.max_output_length,
            rewordings=args.rewordings,
            retrieval=not args.no_retrieval,
            raft_negatives=args.raft_negatives,
        )
        report = build_dataset(
            project.root, inputs or None, options, args.model, preview_count=max(args.preview, 0)
        )
    except (DatasetError, WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an input that cannot be read (permissions, a device, a vanished file)
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(format_summary(report))
    for text in report.preview:
        print("-" * 60)
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
