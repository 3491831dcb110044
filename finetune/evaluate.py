"""Evaluate a run on the test split: ROUGE-1/2/L, BLEU-4 and key facts, tuned model beside base model.

Prompts are built from the question only (system + user turns, never the reference answer).
Chinese text is segmented with jieba. The key-facts metric is the share of test answers that
contain every number, date, quoted name and named place/organisation of the reference answer
(facts the question already states are left out: repeating them proves nothing).
Writes RUN_DIR/eval/metrics.json and RUN_DIR/eval/predictions.jsonl.

    python -m finetune.evaluate data/demo/runs/RUN_ID
    python -m finetune.evaluate data/demo/runs/RUN_ID --adapter data/demo/runs/RUN_ID/checkpoint-40 --limit 20
    python -m finetune.evaluate RUN_DIR --test data/demo/dataset/test.jsonl --base models/smollm2-135m-instruct
    python -m finetune.evaluate RUN_DIR --questions reworded.jsonl --project demo   # what users feel

With --questions (JSONL: question, answer, optional key_facts and source_url; questions worded the way
students ask, never trained on), each question is answered four ways as `blocks.chat` answers it:
base, tuned, base + retrieval and tuned + retrieval (retrieval: the project's index, blocks.index).
Scores: the share of replies holding every key fact, and for the retrieval modes the share whose
first cited source is the question's source page. Written to eval/reworded.json (metrics.json keeps
the test-split scores and gains a "reworded" summary).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

_CJK = "\u4e00-\u9fff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(r"[a-z0-9]+(?:[.:'\-/][a-z0-9]+)*")
_SPLIT = re.compile(f"([{_CJK}]+)")
# Key facts. Digits with their separators and units: 8:00, 027-8765-4321, 2024-10-31, 3.5%, 1923年, 24个.
_NUMBER_FACT = re.compile(r"\d+(?:[.:/\-]\d+)*(?:\s?%|[年月日号点时分秒元个位名人届栋层楼])?")
_CN_NUM = "[零〇一二两三四五六七八九十百千万]"
_CN_DATE_FACT = re.compile(f"(?:(?:\\d+|{_CN_NUM}+)年)?(?:\\d+|{_CN_NUM}+)月(?:\\d+|{_CN_NUM}+)[日号]")
_CN_NUMBER_FACT = re.compile(f"{_CN_NUM}+[年月日号点时元栋层届]|{_CN_NUM}{{2,}}[个位名人]")
_QUOTED_FACT = re.compile(r"[“「《\"]([^”」》\"]{2,40})[”」》\"]")
_EN_NAME = re.compile(r"\b[A-Z][a-zA-Z]+(?:\s+(?:of\s+|the\s+)?[A-Z][a-zA-Z]*)*")
_EN_LEADING = {"the", "a", "an", "in", "on", "at", "call", "it", "this", "our", "you", "we", "please"}
_CN_PLACE_SUFFIXES = (
    "大学",
    "学院",
    "学堂",
    "图书馆",
    "体育馆",
    "医院",
    "食堂",
    "餐厅",
    "宿舍",
    "中心",
    "办公室",
    "校区",
    "大楼",
    "楼",
    "馆",
    "处",
    "系",
    "路",
    "门",
)


class EvaluationError(RuntimeError):
    """An evaluation that cannot run; the message says what to do."""


@dataclass
class TestItem:
    """One test example: the prompt turns (system + user only) and the reference answer."""

    id: str
    prompt: list[dict]
    reference: str

    @property
    def question(self) -> str:
        return next((m["content"] for m in reversed(self.prompt) if m["role"] == "user"), "")


@dataclass
class Scores:
    """Text-overlap and key-fact scores of one model's answers (fractions in 0..1)."""

    rouge1: float
    rouge2: float
    rougeL: float
    bleu4: float
    facts_all: float | None  # share of answers containing all of the reference's key facts
    facts_recall: float | None  # mean share of the reference's key facts found in an answer
    n: int
    n_with_facts: int


# ---------------------------------------------------------------- pure metrics


def tokenize(text: str) -> list[str]:
    """Lower-cased words; Chinese runs segmented with jieba, punctuation dropped."""
    tokens: list[str] = []
    for part in _SPLIT.split(text.lower()):
        if not part:
            continue
        if _CJK_RUN.fullmatch(part):
            import jieba

            tokens.extend(w for w in jieba.lcut(part) if w.strip())
        else:
            tokens.extend(_WORD.findall(part))
    return tokens


def count_ngrams(tokens: list[str], n: int) -> Counter:
    """Multiset of the n-grams in `tokens`."""
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def f1_score(overlap: int, n_pred: int, n_ref: int) -> float:
    """Harmonic mean of precision overlap/n_pred and recall overlap/n_ref (0 if either is empty)."""
    if overlap == 0 or n_pred == 0 or n_ref == 0:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def rouge_n(pred: list[str], ref: list[str], n: int) -> float:
    """ROUGE-N F1 between token lists."""
    p, r = count_ngrams(pred, n), count_ngrams(ref, n)
    return f1_score(sum((p & r).values()), sum(p.values()), sum(r.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: list[str], ref: list[str]) -> float:
    """ROUGE-L F1 (longest common subsequence)."""
    return f1_score(lcs_length(pred, ref), len(pred), len(ref))


def corpus_bleu(preds: list[list[str]], refs: list[list[str]], max_n: int = 4) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions over all pairs, brevity penalty, no smoothing."""
    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs, strict=True):
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for n in range(1, max_n + 1):
            p, r = count_ngrams(pred, n), count_ngrams(ref, n)
            matches[n - 1] += sum((p & r).values())
            totals[n - 1] += sum(p.values())
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def extract_key_facts(text: str) -> list[str]:
    """Numbers, dates, times, quoted names and named places/organisations in `text` (deduplicated)."""
    facts: list[str] = []
    facts += [m.group(0).replace(" ", "") for m in _NUMBER_FACT.finditer(text)]
    facts += _CN_DATE_FACT.findall(text) + _CN_NUMBER_FACT.findall(text)
    facts += [q.strip() for q in _QUOTED_FACT.findall(text)]
    for m in _EN_NAME.finditer(text):
        words = m.group(0).split()
        while words and words[0].lower() in _EN_LEADING:
            words = words[1:]
        at_sentence_start = m.start() == 0 or text[: m.start()].rstrip()[-1:] in ".!?"
        if len(words) >= 2 or (words and not at_sentence_start):
            facts.append(" ".join(words))
    facts += find_chinese_places(text)
    seen: dict[str, None] = {}
    for fact in facts:
        if fact and not any(fact != other and fact in other for other in facts):
            seen.setdefault(fact)  # keep "1923年", drop the "1923" inside it
    return list(seen)


def find_chinese_places(text: str) -> list[str]:
    """Names ending in a place/organisation word (东湖大学, 图书馆, 东区食堂), found via jieba words."""
    import jieba

    places = []
    for run in _CJK_RUN.findall(text):
        words = jieba.lcut(run)
        for i, word in enumerate(words):
            suffix = next((s for s in _CN_PLACE_SUFFIXES if word.endswith(s)), None)
            if suffix is None:
                continue
            if word == suffix and i > 0 and len(words[i - 1]) >= 2:
                places.append(words[i - 1] + word)  # "东湖" + "大学"
            elif len(word) >= 2:
                places.append(word)
    return places


def answer_facts(reference: str, question: str = "") -> list[str]:
    """Key facts of the reference answer, minus those already in the question (echoing them proves nothing)."""
    asked = normalise_for_match(question)
    return [f for f in extract_key_facts(reference) if normalise_for_match(f) not in asked]


def normalise_for_match(text: str) -> str:
    """Lower case, numbers written one way (blocks.index.normalize_numbers), no spaces: '8 : 00' and '8:00',
    '1,200' and '1200', '8:00-22:00' and '8:00 to 22:00', 'Building  A' and 'building a' match."""
    from blocks.index import normalize_numbers

    return re.sub(r"\s+", "", normalize_numbers(text).lower())


def fact_hits(answer: str, facts: list[str]) -> list[bool]:
    """For each key fact, whether `answer` contains it."""
    norm = normalise_for_match(answer)
    return [normalise_for_match(f) in norm for f in facts]


def score_answers(answers: list[str], references: list[str], questions: list[str] | None = None) -> Scores:
    """ROUGE-1/2/L (mean F1), corpus BLEU-4 and the key-facts scores of `answers` against `references`."""
    if len(answers) != len(references) or not answers:
        raise EvaluationError("Nothing to score: the test split is empty or answers are missing.")
    questions = questions or [""] * len(answers)
    preds = [tokenize(a) for a in answers]
    refs = [tokenize(r) for r in references]
    n = len(answers)
    all_hits, recalls = [], []
    for answer, reference, question in zip(answers, references, questions, strict=True):
        facts = answer_facts(reference, question)
        if facts:
            hits = fact_hits(answer, facts)
            all_hits.append(all(hits))
            recalls.append(sum(hits) / len(hits))
    return Scores(
        rouge1=sum(rouge_n(p, r, 1) for p, r in zip(preds, refs, strict=True)) / n,
        rouge2=sum(rouge_n(p, r, 2) for p, r in zip(preds, refs, strict=True)) / n,
        rougeL=sum(rouge_l(p, r) for p, r in zip(preds, refs, strict=True)) / n,
        bleu4=corpus_bleu(preds, refs),
        facts_all=sum(all_hits) / len(all_hits) if all_hits else None,
        facts_recall=sum(recalls) / len(recalls) if recalls else None,
        n=n,
        n_with_facts=len(all_hits),
    )


def split_record(record: dict, where: str) -> TestItem:
    """Prompt (system + user turns before the final answer) and reference (the final assistant turn)."""
    messages = record.get("messages") if isinstance(record, dict) else None
    if not messages or messages[-1].get("role") != "assistant":
        raise EvaluationError(f"{where}: expected chat 'messages' ending with an assistant turn.")
    prompt = [
        {"role": m["role"], "content": m["content"]} for m in messages[:-1] if m["role"] in ("system", "user")
    ]
    if not any(m["role"] == "user" for m in prompt):
        raise EvaluationError(f"{where}: no user turn to ask.")
    item_id = str((record.get("meta") or {}).get("id") or where)
    return TestItem(id=item_id, prompt=prompt, reference=messages[-1]["content"])


# ---------------------------------------------------------------- files and models


def load_test_items(path: Path, limit: int | None = None) -> list[TestItem]:
    """Test examples from a chat-JSONL split (first `limit` of them)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"Test split {path} does not exist: build the dataset (Dataset tab) first.")
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvaluationError(f"{path.name}:{lineno}: not valid JSON ({exc.msg}).") from exc
            items.append(split_record(record, f"{path.name}:{lineno}"))
        if limit is not None and len(items) >= limit:
            break
    if not items:
        raise EvaluationError(f"Test split {path} is empty: build the dataset with a test share above 0.")
    return items


def find_test_split(run_dir: Path) -> Path:
    """The run's test split: dataset_dir from its frozen config, else the project's dataset folder."""
    import yaml

    config_file = run_dir / "config.yaml"
    config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    for key in ("dataset_dir", "dataset"):
        value = (config or {}).get(key)
        if isinstance(value, str) and value:
            folder = Path(value)
            if not folder.is_absolute():
                from blocks.models import REPO_ROOT

                folder = REPO_ROOT / folder
            return folder / "test.jsonl"
    return run_dir.parent.parent / "dataset" / "test.jsonl"


def resolve_base_model(adapter_dir: Path, base_override: str | None = None) -> str:
    """The base model recorded with the adapter, checked against its fingerprint."""
    from blocks.models import model_fingerprint

    record_file = adapter_dir / "umtcds_adapter.json"
    record = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {}
    base = base_override or record.get("base_model")
    if not base:
        raise EvaluationError(f"{record_file} does not name the base model: pass --base MODEL_DIR.")
    if not Path(base).is_dir():
        raise EvaluationError(
            f"Base model {base} not found (moved?): pass --base with its new folder; it is checked against "
            "the fingerprint recorded at training time."
        )
    expected = record.get("base_fingerprint")
    if expected and model_fingerprint(base) != expected:
        raise EvaluationError(
            f"{base} is not the model this adapter was trained on (fingerprint differs): "
            "pass --base with the original base model."
        )
    return str(base)


def generate_answers(
    model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 128, batch_size: int = 8
) -> Iterator[list[str]]:
    """Greedy answers to chat prompts, one list per batch (so callers can report progress)."""
    import torch

    tokenizer.padding_side = "left"  # decoder-only: new tokens follow the prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stop_ids = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        stop_ids.append(im_end)
    device = next(model.parameters()).device
    for start in range(0, len(prompts), batch_size):
        texts = [
            tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in prompts[start : start + batch_size]
        ]
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        yield [t.strip() for t in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def evaluate_run(
    run_dir: str | Path,
    adapter: str | Path | None = None,
    limit: int | None = None,
    test_file: str | Path | None = None,
    base: str | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate with the base model and the tuned model on the test split, score both, write eval/."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = Path(run_dir)
    adapter_dir = Path(adapter) if adapter else run_dir / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise EvaluationError(
            f"No adapter in {adapter_dir}: finish (or resume) the training run, or pass --adapter "
            "with a checkpoint folder."
        )
    items = load_test_items(Path(test_file) if test_file else find_test_split(run_dir), limit)
    base_path = resolve_base_model(adapter_dir, base)
    # The adapter folder carries the tokenizer and chat template used in training.
    tok_source = adapter_dir if (adapter_dir / "tokenizer_config.json").is_file() else Path(base_path)
    tokenizer = AutoTokenizer.from_pretrained(tok_source)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = (
        AutoModelForCausalLM.from_pretrained(base_path, dtype=dtype, use_safetensors=True).to(device).eval()
    )
    prompts = [item.prompt for item in items]
    answers: dict[str, list[str]] = {"base": [], "tuned": []}
    total = 2 * len(items)
    for name in ("base", "tuned"):
        if name == "tuned":
            # Base answers first: wrapping injects the adapter into the same weights.
            model = PeftModel.from_pretrained(model, adapter_dir).to(device).eval()
        for batch in generate_answers(model, tokenizer, prompts, max_new_tokens, batch_size):
            answers[name] += batch
            if on_progress:
                done = len(answers["base"]) + len(answers["tuned"])
                on_progress(name, done, total)
    references = [item.reference for item in items]
    questions = [item.question for item in items]
    scores = {name: score_answers(answers[name], references, questions) for name in ("tuned", "base")}
    metrics = {
        "run_id": run_dir.name,
        "adapter": str(adapter_dir),
        "base_model": base_path,
        "n": len(items),
        "created_at": time.time(),
        **{name: asdict(s) for name, s in scores.items()},
    }
    rows = []
    for i, item in enumerate(items):
        facts = answer_facts(item.reference, item.question)
        rows.append(
            {
                "id": item.id,
                "question": item.question,
                "reference": item.reference,
                "key_facts": facts,
                "tuned": answers["tuned"][i],
                "base": answers["base"][i],
                "tuned_facts_found": fact_hits(answers["tuned"][i], facts),
                "base_facts_found": fact_hits(answers["base"][i], facts),
            }
        )
    eval_dir = run_dir / "eval"
    write_atomic(
        eval_dir / "predictions.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    write_atomic(eval_dir / "metrics.json", json.dumps(metrics, ensure_ascii=False, indent=1))
    return metrics


# ---------------------------------------------------------------- reworded questions (what users feel)

MODES = ("base", "tuned", "base+retrieval", "tuned+retrieval")


@dataclass
class Question:
    """A question worded the way a student asks it, with what a right reply must contain."""

    question: str
    answer: str
    key_facts: list[str]
    source_url: str


def load_questions(path: Path, site: str | None = None) -> list[Question]:
    """Questions from JSONL; `site` replaces the placeholder host 'http://SITE' in source URLs."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"Questions file {path} does not exist.")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvaluationError(f"{path.name}:{lineno}: not valid JSON ({exc.msg}).") from exc
        if (
            not isinstance(rec, dict)
            or not isinstance(rec.get("question"), str)
            or not rec["question"].strip()
        ):
            raise EvaluationError(f"{path.name}:{lineno}: needs a 'question' string.")
        answer = rec.get("answer") if isinstance(rec.get("answer"), str) else ""
        facts = rec.get("key_facts")
        facts = [str(f) for f in facts if str(f).strip()] if isinstance(facts, list) else []
        if not facts:
            facts = answer_facts(answer, rec["question"])
        if not facts:
            raise EvaluationError(f"{path.name}:{lineno}: no key_facts given and none found in the answer.")
        url = rec.get("source_url") if isinstance(rec.get("source_url"), str) else ""
        if site and url.startswith("http://SITE"):
            url = site.rstrip("/") + url[len("http://SITE") :]
        out.append(Question(rec["question"].strip(), answer, facts, url))
    if not out:
        raise EvaluationError(f"Questions file {path} holds no questions.")
    return out


def same_page(a: str, b: str) -> bool:
    """URLs naming the same page (scheme, host case, trailing slash and query order ignored)."""
    from urllib.parse import parse_qsl, urlsplit

    def key(u: str):
        p = urlsplit(u.strip())
        return (p.netloc.lower(), p.path.rstrip("/") or "/", sorted(parse_qsl(p.query)))

    return bool(a and b) and key(a) == key(b)


def evaluate_questions(
    adapter_dir: str | Path,
    questions: list[Question],
    project=None,
    base: str | None = None,
    modes: tuple[str, ...] = MODES,
    max_new_tokens: int = 128,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Answer each question in each mode exactly as `blocks.chat` does (greedy) and score the replies."""
    from blocks.chat import GROUNDED_REPETITION_PENALTY, GenParams, generate_reply, load_model
    from blocks.index import cited_hits, ensure_index, grounded_messages

    if any(m.endswith("+retrieval") for m in modes):
        if project is None:
            raise EvaluationError("The retrieval modes need a project with an index: pass --project NAME.")
        index = ensure_index(project)
    loaded = load_model(base, adapter_dir)
    plain = GenParams(temperature=0.0, max_new_tokens=max_new_tokens)  # as blocks.chat --temperature 0
    grounded_params = GenParams(
        temperature=0.0, max_new_tokens=max_new_tokens, repetition_penalty=GROUNDED_REPETITION_PENALTY
    )
    rows = [{"question": q.question, "key_facts": q.key_facts, "source_url": q.source_url} for q in questions]
    summary = {}
    total = len(modes) * len(questions)
    done = 0
    for mode in modes:
        use_adapter = mode.startswith("tuned")
        grounded = mode.endswith("+retrieval")
        if use_adapter and loaded.adapter is None:
            continue
        all_facts, cited_right = [], []
        for q, row in zip(questions, rows, strict=True):
            hits = index.search(q.question) if grounded else []
            messages = (
                grounded_messages([], q.question, hits)
                if grounded
                else [{"role": "user", "content": q.question}]
            )
            params = grounded_params if grounded else plain
            reply = generate_reply(loaded, messages, params, use_adapter=use_adapter).text
            hits_ok = all(fact_hits(reply, q.key_facts))
            all_facts.append(hits_ok)
            row[mode] = {"reply": reply, "facts": hits_ok}
            if grounded:
                cited = cited_hits(reply, hits)
                right = bool(cited) and same_page(cited[0].passage.url, q.source_url)
                cited_right.append(right)
                row[mode]["cited"] = [h.passage.url for h in cited]
                row[mode]["retrieved_source"] = any(same_page(h.passage.url, q.source_url) for h in hits)
            done += 1
            if on_progress:
                on_progress(mode, done, total)
        summary[mode] = {
            "facts_all": sum(all_facts) / len(all_facts),
            "n": len(all_facts),
            **(
                {
                    "citation_accuracy": sum(cited_right) / len(cited_right),
                    "source_retrieved": sum(r[mode]["retrieved_source"] for r in rows) / len(rows),
                }
                if grounded
                else {}
            ),
        }
    from blocks.chat import unload_model

    unload_model(loaded)
    return {"summary": summary, "rows": rows}


def write_reworded(run_dir: Path, result: dict, questions_file: Path) -> None:
    """eval/reworded.json (every reply) and a "reworded" summary inside eval/metrics.json."""
    eval_dir = Path(run_dir) / "eval"
    payload = {"questions_file": str(questions_file), "created_at": time.time(), **result}
    write_atomic(eval_dir / "reworded.json", json.dumps(payload, ensure_ascii=False, indent=1))
    metrics_file = eval_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else {}
    metrics["reworded"] = {"questions_file": str(questions_file), **result["summary"]}
    write_atomic(metrics_file, json.dumps(metrics, ensure_ascii=False, indent=1))


def format_reworded(summary: dict) -> str:
    """One line per mode: key facts, and for retrieval modes the citation accuracy."""
    lines = [f"{'mode':18s} {'all facts':>9s} {'cites page':>10s} {'retrieved':>9s}"]
    for mode, s in summary.items():
        if not isinstance(s, dict):
            continue
        cite = f"{s['citation_accuracy']:10.3f}" if "citation_accuracy" in s else f"{'':10s}"
        found = f"{s['source_retrieved']:9.3f}" if "source_retrieved" in s else ""
        lines.append(f"{mode:18s} {s['facts_all']:9.3f} {cite} {found}  (n={s['n']})")
    return "\n".join(lines)


def format_metrics(metrics: dict) -> str:
    """A small side-by-side table of tuned vs base scores."""
    lines = [f"{'metric':14s} {'tuned':>8s} {'base':>8s}"]
    for key in ("rouge1", "rouge2", "rougeL", "bleu4", "facts_all", "facts_recall"):
        cells = []
        for name in ("tuned", "base"):
            value = metrics[name][key]
            cells.append(f"{value:8.3f}" if value is not None else f"{'n/a':>8s}")
        lines.append(f"{key:14s} {cells[0]} {cells[1]}")
    lines.append(f"{metrics['n']} test examples, {metrics['tuned']['n_with_facts']} with key facts")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path, help="the run folder (data/<project>/runs/<run-id>)")
    parser.add_argument("--adapter", type=Path, default=None, help="adapter folder (default RUN_DIR/adapter)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N test examples")
    parser.add_argument("--test", type=Path, default=None, help="test split (default: the run's dataset)")
    parser.add_argument("--base", default=None, help="base model folder, if it moved since training")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--questions", type=Path, default=None, help="JSONL of reworded questions (instead of the test split)"
    )
    parser.add_argument(
        "--project", default=None, help="project whose retrieval index the +retrieval modes use"
    )
    parser.add_argument("--site", default=None, help="replaces http://SITE in the questions' source URLs")
    parser.add_argument(
        "--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}"
    )
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    if not args.run_dir.is_dir():
        print(f"error: run folder {args.run_dir} does not exist", file=sys.stderr)
        return 2

    def report(name: str, done: int, total: int) -> None:
        print(f"\r{name}: {done}/{total}", end="", file=sys.stderr, flush=True)

    if args.questions is not None:
        return _main_questions(args, report)
    try:
        metrics = evaluate_run(
            args.run_dir,
            args.adapter,
            args.limit,
            args.test,
            args.base,
            args.max_new_tokens,
            args.batch_size,
            report,
        )
    except EvaluationError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    print(format_metrics(metrics))
    print(f"wrote {args.run_dir / 'eval' / 'metrics.json'}")
    return 0


def _main_questions(args, report) -> int:
    from blocks.chat import ChatError
    from blocks.index import RetrievalError
    from blocks.workspace import WorkspaceError, get_project

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        print(f"error: unknown mode(s) {unknown}: choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    try:
        questions = load_questions(args.questions, args.site)
        if args.limit:
            questions = questions[: args.limit]
        project = get_project(args.project) if args.project else None
        adapter = args.adapter or args.run_dir / "adapter"
        result = evaluate_questions(
            adapter, questions, project, args.base, modes, args.max_new_tokens, report
        )
    except (EvaluationError, ChatError, RetrievalError, WorkspaceError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 2
    print(file=sys.stderr)
    write_reworded(args.run_dir, result, args.questions)
    print(format_reworded(result["summary"]))
    print(f"wrote {args.run_dir / 'eval' / 'reworded.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
