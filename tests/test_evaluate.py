"""Evaluation: metrics against hand-computed values, key facts, and tuned-vs-base on a tiny real model."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import finetune.evaluate as ev
from blocks.models import REPO_ROOT, model_fingerprint

PAIRS = [
    ("When does the library open?", "The library opens at 8:00 in Building A."),
    ("What is the phone number?", "Call 027-8765-4321 before 22:00."),
    ("东湖大学创建于哪一年？", "东湖大学始建于1923年。"),
]
SYSTEM = "You are Eastlake University's assistant."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


# ---------------------------------------------------------------- metrics by hand


def test_rouge_by_hand():
    pred, ref = "the cat sat on the mat".split(), "the cat is on the mat".split()
    # unigrams: the x2, cat, on, mat overlap = 5 of 6 each side
    assert ev.rouge_n(pred, ref, 1) == pytest.approx(5 / 6)
    # bigrams: "the cat", "on the", "the mat" = 3 of 5 each side
    assert ev.rouge_n(pred, ref, 2) == pytest.approx(3 / 5)
    # LCS "the cat on the mat" = 5
    assert ev.rouge_l(pred, ref) == pytest.approx(5 / 6)
    # unequal lengths: P = 2/2, R = 2/4 -> F1 = 2/3
    assert ev.rouge_n(["a", "b"], ["a", "b", "c", "d"], 1) == pytest.approx(2 / 3)
    assert ev.rouge_l([], ref) == 0.0


def test_bleu4_by_hand():
    longer, ref = "the cat sat on the red mat".split(), "the cat sat on the mat".split()
    # clipped precisions 6/7, 4/6, 3/5, 2/4; candidate longer than reference: no brevity penalty
    assert ev.corpus_bleu([longer], [ref]) == pytest.approx((6 / 7 * 4 / 6 * 3 / 5 * 2 / 4) ** 0.25)
    # shorter candidate: precisions 6/6, 4/5, 3/4, 2/3 and brevity penalty exp(1 - 7/6)
    expected = math.exp(1 - 7 / 6) * (1 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert ev.corpus_bleu([ref], [longer]) == pytest.approx(expected)
    assert ev.corpus_bleu([ref], [ref]) == pytest.approx(1.0)
    # no 4-gram in common: 0 (unsmoothed corpus BLEU)
    assert ev.corpus_bleu(["the cat sat".split()], [ref]) == 0.0


def test_chinese_is_scored_on_jieba_words():
    tokens = ev.tokenize("东湖大学图书馆早上八点开门, Building A")
    assert "图书馆" in tokens and "building" in tokens
    # word-level, not character-level: "图书馆" vs "图书" shares no unigram
    assert ev.rouge_n(ev.tokenize("图书馆"), ev.tokenize("图书"), 1) == 0.0
    same = ev.score_answers(["东湖大学始建于1923年。"], ["东湖大学始建于1923年。"])
    assert same.rouge1 == same.rougeL == pytest.approx(1.0)


def test_key_facts_numbers_dates_names_places():
    facts = ev.extract_key_facts("The library opens at 8:00 and closes at 22:00. Call 027-8765-4321.")
    assert facts == ["8:00", "22:00", "027-8765-4321"]
    facts = ev.extract_key_facts("Eastlake University was founded in 1952. The office is in Building A.")
    assert set(facts) == {"1952", "Eastlake University", "Building A"}
    assert "东湖大学" in ev.extract_key_facts("东湖大学始建于1923年。")
    assert "1923年" in ev.extract_key_facts("东湖大学始建于1923年。")
    assert "十月三十一日" in ev.extract_key_facts("奖学金申请截止日期为十月三十一日。")
    assert "明德、笃学、求实、致远" in ev.extract_key_facts("校训是“明德、笃学、求实、致远”。")
    assert ev.extract_key_facts("yes, it is open every day") == []


def test_fact_scores_count_answers_with_all_facts():
    refs = ["It opens at 8:00 in Building A.", "Call 027-8765-4321.", "It is open every day."]
    answers = ["Open from 8:00, building a.", "Call 027-8765-0000.", "Sure."]
    scores = ev.score_answers(answers, refs)
    # the third reference has no key facts, so it is not counted
    assert (scores.n, scores.n_with_facts) == (3, 2)
    assert scores.facts_all == pytest.approx(1 / 2)
    assert scores.facts_recall == pytest.approx((1 + 0) / 2)
    # A fact the question already names does not count: echoing the question is not knowing the answer.
    asked = ev.score_answers(
        ["东湖大学创建于1999年。"], ["东湖大学始建于1923年。"], ["东湖大学创建于哪一年？"]
    )
    assert ev.answer_facts("东湖大学始建于1923年。", "东湖大学创建于哪一年？") == ["1923年"]
    assert (asked.facts_all, asked.facts_recall) == (0.0, 0.0)


def test_prompt_holds_question_only(tmp_path):
    record = {
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": "When does the library open?"},
            {"role": "assistant", "content": "SECRET-REFERENCE 8:00"},
        ],
        "meta": {"id": "q1"},
    }
    item = ev.split_record(record, "test.jsonl:1")
    assert [m["role"] for m in item.prompt] == ["system", "user"]
    assert "SECRET" not in json.dumps(item.prompt) and item.reference == "SECRET-REFERENCE 8:00"
    assert item.question == "When does the library open?" and item.id == "q1"


def test_bad_test_split_gives_clear_messages(tmp_path):
    with pytest.raises(ev.EvaluationError, match="build the dataset"):
        ev.load_test_items(tmp_path / "missing.jsonl")
    empty = tmp_path / "test.jsonl"
    empty.write_text("\n")
    with pytest.raises(ev.EvaluationError, match="empty"):
        ev.load_test_items(empty)
    empty.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    with pytest.raises(
        ev.EvaluationError, match="test.jsonl:1: expected chat 'messages' ending with an assistant"
    ):
        ev.load_test_items(empty)
    empty.write_text("{oops\n")
    with pytest.raises(ev.EvaluationError, match="not valid JSON"):
        ev.load_test_items(empty)


# ---------------------------------------------------------------- tiny real model


def write_split(path: Path, pairs) -> Path:
    rows = [
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ],
            "meta": {"id": f"t{i}"},
        }
        for i, (q, a) in enumerate(pairs)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def train_adapter(base: Path, out: Path, method: str, steps: int) -> Path:
    """Memorise PAIRS with a PEFT adapter (loss on the answer tokens only) and save it like the trainer."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if method == "lora":
        # lm_head too: the tiny model's tied embeddings are too small to reach confident logits otherwise.
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        cfg = LoraConfig(r=32, lora_alpha=32, target_modules=targets, task_type="CAUSAL_LM")
        lr = 3e-3
    else:
        cfg = PrefixTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")
        lr = 5e-2
    torch.manual_seed(0)
    model = get_peft_model(model, cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    batches = []
    for q, a in PAIRS:
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        p_ids = tok.apply_chat_template(prompt, add_generation_prompt=True)
        full = tok.apply_chat_template([*prompt, {"role": "assistant", "content": a}])
        labels = [-100] * len(p_ids) + full[len(p_ids) :]
        batches.append((torch.tensor([full]), torch.tensor([labels])))
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # also for module-scoped fixtures, which run before `one_torch_thread`
    for step in range(steps):
        ids, labels = batches[step % len(batches)]
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    torch.set_num_threads(threads)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    record = {"method": method, "base_model": str(base), "base_fingerprint": model_fingerprint(base)}
    (out / "umtcds_adapter.json").write_text(json.dumps(record))
    return out


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A run folder with a LoRA adapter that memorised PAIRS, and PAIRS as its project's test split."""
    project = tmp_path_factory.mktemp("proj") / "demo"
    run_dir = project / "runs" / "r1"
    train_adapter(tiny_model_dir, run_dir / "adapter", "lora", steps=150)
    write_split(project / "dataset" / "test.jsonl", PAIRS)
    return run_dir


def test_tuned_model_beats_base_and_files_are_written(lora_run):
    seen = []
    metrics = ev.evaluate_run(lora_run, max_new_tokens=24, on_progress=lambda *a: seen.append(a))
    assert metrics["n"] == 3 and seen[-1][1:] == (6, 6)
    assert metrics["tuned"]["facts_all"] == pytest.approx(1.0)
    assert metrics["base"]["facts_all"] == pytest.approx(0.0)
    assert metrics["tuned"]["rougeL"] > metrics["base"]["rougeL"]
    saved = json.loads((lora_run / "eval" / "metrics.json").read_text())
    assert saved["tuned"] == metrics["tuned"]
    rows = [json.loads(line) for line in (lora_run / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert [r["question"] for r in rows] == [q for q, _ in PAIRS]
    assert rows[0]["tuned"] == PAIRS[0][1] and rows[0]["base"] != PAIRS[0][1]
    assert rows[0]["tuned_facts_found"] == [True, True]


@pytest.mark.slow
def test_limit_and_cli_table(lora_run):
    out = subprocess.run(
        [sys.executable, "-m", "finetune.evaluate", str(lora_run), "--limit", "1", "--max-new-tokens", "16"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "facts_all" in out.stdout and "1 test examples" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "finetune.evaluate", str(lora_run.parent / "nope")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_moved_or_wrong_base_model_is_refused(lora_run, tiny_model_dir, tmp_path):
    with pytest.raises(ev.EvaluationError, match="not found"):
        ev.evaluate_run(lora_run, base=str(tmp_path / "gone"))
    from tiny import build_tiny_model

    other = build_tiny_model(tmp_path / "other", seed=1)
    with pytest.raises(ev.EvaluationError, match="fingerprint differs"):
        ev.evaluate_run(lora_run, base=str(other))
    moved = shutil.copytree(tiny_model_dir, tmp_path / "moved")
    assert ev.resolve_base_model(lora_run / "adapter", str(moved)) == str(moved)


def test_prefix_adapter_is_used_in_generation(tiny_model_dir, tmp_path):
    """P-tuning v2: the learned prefix must change the answers (fails if generate() ignores it)."""
    run_dir = tmp_path / "demo" / "runs" / "pt"
    train_adapter(tiny_model_dir, run_dir / "adapter", "ptuning", steps=60)
    write_split(tmp_path / "demo" / "dataset" / "test.jsonl", PAIRS)
    ev.evaluate_run(run_dir, max_new_tokens=12)
    rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").read_text().splitlines()]
    # A random tiny model cannot learn much in 60 steps, but an ignored prefix would give identical text.
    assert any(r["tuned"] != r["base"] for r in rows)
