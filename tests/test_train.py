"""The trainer end to end on tiny real models: progress events, checkpoints, stop, resume, adapters.

Most runs call `finetune.train.main` in-process (imports are paid once); the SIGKILL test and a
real process-group SIGTERM run the trainer as the UI does, in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from blocks.config import TrainConfig, save_config
from finetune import train as trainer

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [
    ("When does the library open?", "It opens at 8:00."),
    ("When was Eastlake University founded?", "In 1952."),
    ("Where is the registrar's office?", "In Building A."),
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: see conftest


@pytest.fixture(scope="module")
def steerable_model(tmp_path_factory) -> Path:
    """The tiny Llama with a wide weight init, so a learned prefix can steer it."""
    from tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("steerable") / "tiny", initializer_range=0.3)


def write_dataset(folder: Path, pairs=PAIRS, dev=True) -> Path:
    """train.jsonl (+ dev.jsonl) in the Dataset stage's chat format."""
    folder.mkdir(parents=True, exist_ok=True)

    def line(q, a):
        msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return json.dumps({"messages": msgs, "meta": {"source": "test"}}, ensure_ascii=False)

    (folder / "train.jsonl").write_text("".join(line(q, a) + "\n" for q, a in pairs), encoding="utf-8")
    if dev:
        (folder / "dev.jsonl").write_text(line(*pairs[0]) + "\n", encoding="utf-8")
    return folder


def make_config(tmp_path: Path, model: Path, **fields) -> Path:
    """A small-step config YAML for the tiny model."""
    cfg = TrainConfig(
        base_model=str(model),
        dataset_dir=str(write_dataset(tmp_path / "dataset")),
        learning_rate=2e-2,
        max_steps=20,
        batch_size=3,
        logging_steps=2,
        eval_steps=10,
        save_steps=10,
        lr_scheduler="constant",
        warmup_ratio=0.0,
        max_input_length=128,
        max_output_length=64,
    )
    ptuning = fields.pop("ptuning", {})
    for key, value in fields.items():
        setattr(cfg, key, value)
    for key, value in ptuning.items():
        setattr(cfg.ptuning, key, value)
    return save_config(cfg, tmp_path / "config.yaml")


def read_events(run_dir: Path) -> list[dict]:
    path = run_dir / "progress.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def wait_for_event(run_dir: Path, kind: str, timeout: float = 120, after: int = 0) -> dict:
    """The first `kind` event among the events after the first `after` ones."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        events = read_events(run_dir)[after:]
        found = [e for e in events if e["event"] == kind]
        if found:
            return found[0]
        if any(e["event"] == "end" for e in events):
            raise AssertionError(f"the run ended before any {kind} event: {events[-1]}")
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event in {run_dir} after {timeout} s: {read_events(run_dir)}")


def greedy_answer(model, tokenizer, question: str) -> str:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


# ---------------------------------------------------------------- data encoding


def test_only_the_answer_and_its_end_of_turn_token_are_trained(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    msgs = [
        {"role": "system", "content": "You are the campus assistant."},
        {"role": "user", "content": "When does the library open?"},
        {"role": "assistant", "content": "It opens at 8:00."},
    ]
    rec = trainer.encode_conversation(msgs, tok, max_input=256, max_output=256)
    trained = [t for t in rec["labels"] if t != trainer.IGNORE]
    assert tok.decode(trained).startswith("It opens at 8:00.<|im_end|>")
    prompt = [i for i, lab in zip(rec["input_ids"], rec["labels"], strict=True) if lab == trainer.IGNORE]
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert "8:00" not in tok.decode(prompt)

    short = trainer.encode_conversation(msgs, tok, max_input=8, max_output=3)
    assert len(short["input_ids"]) == 11 and sum(t != trainer.IGNORE for t in short["labels"]) == 3


def test_malformed_dataset_line_is_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n{oops\n'
    )
    with pytest.raises(trainer.DatasetError, match=r"train.jsonl:2"):
        trainer.read_chat_jsonl(path)


def test_out_of_memory_message_suggests_what_to_change():
    import torch

    text = trainer.describe_failure(
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
    )
    assert "Out of memory" in text and "batch_size" in text and "QLoRA" in text and "max_input_length" in text


# ---------------------------------------------------------------- the memory-efficient loss

MIXED = [  # prompts of different lengths (system turn or not) and answers of different lengths
    [{"role": "user", "content": "When does the library open?"}, {"role": "assistant", "content": "8:00."}],
    [
        {"role": "system", "content": "You are the Eastlake University campus assistant."},
        {"role": "user", "content": "Where is the registrar's office?"},
        {"role": "assistant", "content": "In Building A, next to the library; call 027-8765-4321."},
    ],
    [
        {"role": "user", "content": "图书馆几点开门？"},
        {"role": "assistant", "content": "图书馆开放时间为早上八点。"},
    ],
]


def test_fused_head_loss_takes_fp32_hidden_states_with_a_bf16_head():
    """Under bf16 mixed precision accelerate returns the model's outputs (here hidden states) in fp32
    while the output layer stays bf16: the loss must still run (it failed every GPU run once)."""
    import torch

    from finetune.train import chunked_cross_entropy

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False).to(torch.bfloat16)
    hidden = torch.randn(2, 7, 16, dtype=torch.bfloat16)
    targets = torch.randint(0, 50, (2, 7))
    expected = chunked_cross_entropy(hidden, targets, chunk=3, head=head)
    fp32 = hidden.float().requires_grad_()
    loss = chunked_cross_entropy(fp32, targets, chunk=3, head=head)
    loss.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-3)
    assert fp32.grad is not None and fp32.grad.abs().sum() > 0


@pytest.mark.parametrize("fused_head", [True, False])
@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_chunked_label_only_loss_equals_the_models_own_loss_and_gradients(
    tmp_path, steerable_model, method, fused_head, monkeypatch
):
    import torch
    from transformers import AutoTokenizer

    cfg = TrainConfig(base_model=str(steerable_model), method=method)
    model, _ = trainer.load_model_and_tokenizer(cfg, "fp32", checkpointing=False)
    model.eval()  # LoRA dropout off: both losses must see the same network
    tok = AutoTokenizer.from_pretrained(steerable_model)
    batch = trainer.collate_batch(
        [trainer.encode_conversation(m, tok, 128, 64) for m in MIXED], tok.pad_token_id
    )
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # non-zero LoRA B, so every adapter weight gets a gradient
        for p in trainable:
            p.add_(0.05 * torch.randn_like(p))

    reference = model(**batch).loss
    expected = torch.autograd.grad(reference, trainable)
    monkeypatch.setattr(trainer, "loss_chunk_rows", lambda vocab: 7)  # several chunks, the last one partial
    if not fused_head:  # e.g. a soft-capped head: the model computes the kept logits itself
        monkeypatch.setattr(trainer, "PLAIN_HEAD_TYPES", set())
    head_calls = []
    model.get_base_model().lm_head.register_forward_hook(lambda m, i, o: head_calls.append(o.shape))
    loss, outputs = trainer.causal_lm_loss(model, batch)
    got = torch.autograd.grad(loss, trainable)

    n_trained = int((batch["labels"] != trainer.IGNORE).sum())
    if fused_head:  # the head ran chunk by chunk inside the loss, never as one [tokens, vocab] tensor
        assert head_calls == [] and outputs.logits is None
    else:
        assert outputs.logits.shape[1] < batch["input_ids"].shape[1]  # no logits for the shared prompt
    assert abs(loss.item() - reference.item()) < 1e-5, (loss.item(), reference.item())
    assert all(e.abs().max() > 0 for e in expected)
    worst = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
    assert worst < 1e-5 * max(e.abs().max().item() for e in expected) + 1e-7, worst
    # with the Trainer's token count (gradient accumulation), it is the summed loss over that count
    summed, _ = trainer.causal_lm_loss(model, batch, num_items=torch.tensor(2 * n_trained))
    assert abs(summed.item() - reference.item() / 2) < 1e-5
    print(f"{method}: loss {loss.item():.6f} vs {reference.item():.6f}, max grad diff {worst:.2e}")


@pytest.mark.parametrize("method", ["lora", "ptuning"])
@pytest.mark.parametrize("layers", [-1, 1])
def test_layer_checkpointing_keeps_loss_and_gradients_and_the_ptuning_prefix(steerable_model, method, layers):
    """Checkpointed layers are really recomputed, and the result equals no checkpointing (the prefix kept)."""
    import torch
    from transformers import AutoTokenizer

    from finetune.layers import apply_layer_switches, decoder_layers

    cfg = TrainConfig(base_model=str(steerable_model), method=method)
    cfg.lora.dropout = 0.0  # train mode (checkpointing is for training) without random dropout
    model, _ = trainer.load_model_and_tokenizer(cfg, "fp32", checkpointing=False)
    model.train()
    tok = AutoTokenizer.from_pretrained(steerable_model)
    batch = trainer.collate_batch(
        [trainer.encode_conversation(m, tok, 128, 64) for m in MIXED], tok.pad_token_id
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        for p in trainable:
            p.add_(0.05 * torch.randn_like(p))
    calls = [0, 0]
    for i, layer in enumerate(decoder_layers(model)):
        layer.self_attn.register_forward_hook(lambda *_, i=i: calls.__setitem__(i, calls[i] + 1))

    def loss_and_grads():
        calls[:] = [0, 0]
        loss, _ = trainer.causal_lm_loss(model, batch)
        return loss, torch.autograd.grad(loss, trainable)

    plain_loss, plain = loss_and_grads()
    assert calls == [1, 1]
    assert apply_layer_switches(model, layers, compile_layers=False) == (2 if layers < 0 else 1)
    loss, got = loss_and_grads()
    assert calls == ([2, 2] if layers < 0 else [2, 1])  # checkpointed layers ran again in backward
    assert abs(loss.item() - plain_loss.item()) < 1e-6
    worst = max((g - e).abs().max().item() for g, e in zip(got, plain, strict=True))
    assert worst < 1e-6 * max(e.abs().max().item() for e in plain) + 1e-8, worst
    if method == "ptuning":  # the prefix really is in the loss (transformers' own checkpointing drops it)
        with model.disable_adapter():
            assert abs(trainer.causal_lm_loss(model, batch)[0].item() - loss.item()) > 1e-3


@pytest.mark.parametrize("fallback", [True, False])
def test_a_layer_that_fails_to_compile_runs_eagerly_under_auto(steerable_model, monkeypatch, fallback):
    """torch_compile: auto must not stop a run on a machine where compiling fails; 'on' reports it."""
    import torch

    from finetune import layers as layer_switches

    def broken_backend(graph, example_inputs):
        raise RuntimeError("no C compiler found")

    cfg = TrainConfig(base_model=str(steerable_model))
    model, tok = trainer.load_model_and_tokenizer(cfg, "fp32", checkpointing=False)
    batch = trainer.collate_batch(
        [trainer.encode_conversation(m, tok, 128, 64) for m in MIXED], tok.pad_token_id
    )
    model.eval()
    with torch.no_grad():
        expected = trainer.causal_lm_loss(model, batch)[0].item()
    monkeypatch.setattr(layer_switches, "COMPILE_BACKEND", broken_backend)
    torch._dynamo.reset()
    try:
        layer_switches.apply_layer_switches(model, 0, compile_layers=True, fallback=fallback)
        with torch.no_grad():
            if fallback:
                assert trainer.causal_lm_loss(model, batch)[0].item() == pytest.approx(expected, rel=1e-6)
            else:
                with pytest.raises(Exception, match="no C compiler"):
                    trainer.causal_lm_loss(model, batch)
    finally:
        torch._dynamo.config.suppress_errors = False
        torch._dynamo.reset()


def test_length_grouped_batches_pad_less_and_repeat_exactly_on_resume(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    records = [
        {"input_ids": [1] * n, "labels": [1] * n} for n in [5, 90, 7, 60, 8, 95, 6, 70, 9, 88, 5, 65] * 4
    ]

    model = trainer.load_model_and_tokenizer(TrainConfig(base_model=str(tiny_model_dir)), "fp32", False)[0]

    def batches(group: bool, epoch: int) -> list[list[int]]:
        args = TrainingArguments(
            output_dir=str(tmp_path),
            per_device_train_batch_size=4,
            group_by_length=group,
            use_cpu=True,
            report_to=[],
            seed=7,
            remove_unused_columns=False,
        )
        t = trainer.make_trainer(
            model=model,
            args=args,
            train_dataset=records,
            data_collator=lambda b: trainer.collate_batch(b, tok.pad_token_id),
        )
        loader = t.get_train_dataloader()
        loader.set_epoch(epoch)
        return [b["attention_mask"].sum(1).tolist() for b in loader]

    def padding(bs: list[list[int]]) -> float:
        return sum(max(b) * len(b) - sum(b) for b in bs) / sum(max(b) * len(b) for b in bs)

    grouped, shuffled = batches(True, 0), batches(False, 0)
    assert sorted(sum(grouped, [])) == sorted(sum(shuffled, []))  # same data, one epoch
    assert padding(grouped) < 0.5 * padding(shuffled), (padding(grouped), padding(shuffled))
    assert batches(True, 0) == grouped  # a resumed run skips exactly the batches it trained on
    assert batches(True, 1) != grouped  # each epoch its own order


# ---------------------------------------------------------------- full runs (in-process)


def test_lora_run_writes_progress_checkpoints_plot_and_adapter(tmp_path, tiny_model_dir, monkeypatch):
    from blocks.models import model_fingerprint

    monkeypatch.setenv(trainer.PROFILE_STEP_ENV, "3")  # diagnostics: one profiled step
    run_dir = tmp_path / "runs" / "lora-1"
    assert trainer.main([str(make_config(tmp_path, tiny_model_dir)), "--run-dir", str(run_dir)]) == 0

    events = read_events(run_dir)
    assert (
        events[0]["event"] == "start" and events[0]["total_steps"] == 20 and events[0]["resumed_from"] is None
    )
    assert events[-1] == {**events[-1], "event": "end", "status": "done", "error": None}
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == list(range(2, 21, 2))
    assert logs[-1]["loss"] < logs[0]["loss"]  # it learned something
    assert [e["step"] for e in events if e["event"] == "eval"] == [10, 20]
    assert [e["path"] for e in events if e["event"] == "save"] == ["checkpoint-10", "checkpoint-20"]
    assert all("time" in e for e in events)

    adapter = run_dir / "adapter"
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer_config.json",
        "umtcds_adapter.json",
    ):
        assert (adapter / name).is_file(), name
    record = json.loads((adapter / "umtcds_adapter.json").read_text())
    assert record["method"] == "lora" and record["run_id"] == "lora-1"
    assert record["base_fingerprint"] == model_fingerprint(tiny_model_dir)
    assert (run_dir / "checkpoint-20" / "umtcds_adapter.json").is_file()
    assert (run_dir / "checkpoint-20" / "optimizer.pt").is_file()
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert "method: lora" in (run_dir / "config.yaml").read_text()
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(adapter).chat_template  # chat renders like training did
    profile = (run_dir / "profile.txt").read_text()
    assert profile.startswith("optimizer step 3") and "aten::mm" in profile  # the step's matrix products


@pytest.mark.gpu
def test_qlora_keeps_the_unquantized_weights_in_bf16_and_trains(tmp_path, tiny_model_dir):
    """4-bit base layers, bf16 embeddings/output layer (not fp32 copies), and the loss goes down."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("needs CUDA and bitsandbytes")
    cfg = trainer.load_config(make_config(tmp_path, tiny_model_dir, method="qlora", precision="bf16"))
    model, _ = trainer.load_model_and_tokenizer(cfg, "bf16", True, False)
    base = model.get_base_model()
    assert base.lm_head.weight.dtype == base.get_input_embeddings().weight.dtype == torch.bfloat16
    assert any(type(m).__name__ == "Linear4bit" for m in base.modules())
    del model, base
    run_dir = tmp_path / "run"
    config = make_config(tmp_path, tiny_model_dir, method="qlora", precision="bf16")
    assert trainer.main([str(config), "--run-dir", str(run_dir)]) == 0
    logs = [e for e in read_events(run_dir) if e["event"] == "log"]
    assert logs[-1]["loss"] < logs[0]["loss"] and logs[-1]["gpu_gib"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_compiled_checkpointed_layers_train_like_eager_ones(tmp_path, tiny_model_dir, method):
    """torch_compile: on (regional, with checkpointing on a subset of layers) gives eager's losses;
    for P-tuning the compiled layers also append to the prefix cache."""
    import torch
    from torch._dynamo.utils import counters

    from blocks.config import LoraParams

    losses = {}
    for compiled in (False, True):
        torch._dynamo.reset()  # compile afresh: a cached graph from another test would count nothing
        folder = tmp_path / ("compiled" if compiled else "eager")
        config = make_config(
            folder,
            tiny_model_dir,
            max_steps=4,
            logging_steps=1,
            eval_steps=100,
            save_steps=100,
            method=method,
            lora=LoraParams(dropout=0.0),  # no random masks: both runs must compute the same thing
            ptuning={"num_virtual_tokens": 8},
            gradient_checkpointing="on",
            checkpoint_layers=1,
            torch_compile="on" if compiled else "off",
        )
        counters["stats"].clear()
        assert trainer.main([str(config), "--run-dir", str(folder / "run")]) == 0
        losses[compiled] = [e["loss"] for e in read_events(folder / "run") if e["event"] == "log"]
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # dynamo really compiled the layers
    assert len(losses[True]) == 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-3), losses


def test_ptuning_generation_uses_the_learned_prefix(tmp_path, steerable_model):
    """Fails if generate() ignores the prefix (transformers 5.x + peft 0.21: answers stay the base's)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = make_config(
        tmp_path,
        steerable_model,
        method="ptuning",
        learning_rate=0.2,
        max_steps=50,
        logging_steps=10,
        eval_steps=50,
        save_steps=50,
        ptuning={"num_virtual_tokens": 16},
    )
    run_dir = tmp_path / "run"
    assert trainer.main([str(config), "--run-dir", str(run_dir)]) == 0
    assert read_events(run_dir)[-1]["status"] == "done"
    assert json.loads((run_dir / "adapter" / "umtcds_adapter.json").read_text())["method"] == "ptuning"

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(steerable_model)
    before = [greedy_answer(base, tok, q) for q, _ in PAIRS]
    tuned = PeftModel.from_pretrained(base, run_dir / "adapter")
    after = [greedy_answer(tuned, tok, q) for q, _ in PAIRS]
    print("base:", before, "\ntuned:", after)
    hits = sum(answer in got for (_, answer), got in zip(PAIRS, after, strict=True))
    assert hits >= 2, after
    assert after != before


@pytest.mark.parametrize("method", ["lora", "ptuning"])
def test_sigterm_stops_with_a_checkpoint_and_resume_continues_at_that_step(tmp_path, steerable_model, method):
    config = make_config(
        tmp_path,
        steerable_model,
        method=method,
        max_steps=16,
        logging_steps=1,
        save_steps=1000,
        eval_steps=1000,
    )
    run_dir = tmp_path / "run"

    def send_sigterm_after_first_log():
        wait_for_event(run_dir, "log")
        os.kill(os.getpid(), signal.SIGTERM)  # the trainer's handler turns it into should_training_stop

    killer = threading.Thread(target=send_sigterm_after_first_log, daemon=True)
    killer.start()
    assert trainer.main([str(config), "--run-dir", str(run_dir)]) == 0
    killer.join()
    events = read_events(run_dir)
    assert events[-1]["event"] == "end" and events[-1]["status"] == "stopped"
    stop_step = events[-2]["step"]
    assert events[-2] == {**events[-2], "event": "save", "path": f"checkpoint-{stop_step}"}
    assert stop_step < 16 and (run_dir / f"checkpoint-{stop_step}" / "scheduler.pt").is_file()
    assert not (run_dir / "adapter").exists()  # a stopped run's result is its checkpoint

    assert trainer.main([str(run_dir / "config.yaml"), "--run-dir", str(run_dir), "--resume"]) == 0
    resumed = read_events(run_dir)[len(events) :]
    assert resumed[0] == {**resumed[0], "event": "start", "resumed_from": stop_step, "total_steps": 16}
    steps = [e["step"] for e in resumed if e["event"] == "log"]
    assert steps == list(range(stop_step + 1, 17))  # the curve continues, no restart at step 1
    assert resumed[-1]["status"] == "done" and (run_dir / "adapter" / "adapter_config.json").is_file()
    train_curve, _ = trainer.read_curve(run_dir)
    assert [s for s, _ in train_curve] == list(range(1, 17))


def test_missing_dataset_ends_failed_with_a_clear_error(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    (tmp_path / "dataset" / "train.jsonl").unlink()
    run_dir = tmp_path / "run"
    assert trainer.main([str(config), "--run-dir", str(run_dir)]) == 1
    end = read_events(run_dir)[-1]
    assert end["event"] == "end" and end["status"] == "failed"
    assert "train.jsonl" in end["error"] and "build the dataset first" in end["error"]


def test_unknown_config_key_ends_failed_naming_the_key(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir)
    config.write_text(config.read_text() + "lora_rank: 8\n")
    run_dir = tmp_path / "run"
    assert trainer.main([str(config), "--run-dir", str(run_dir)]) == 1
    assert "lora_rank" in read_events(run_dir)[-1]["error"]


def test_read_curve_drops_points_of_a_killed_attempt(tmp_path):
    events = [
        {"event": "start", "total_steps": 9, "resumed_from": None},
        *({"event": "log", "step": s, "loss": 1.0} for s in range(1, 8)),
        {"event": "start", "total_steps": 9, "resumed_from": 5},
        *({"event": "log", "step": s, "loss": 0.5} for s in range(6, 10)),
    ]
    (tmp_path / "progress.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    train_curve, _ = trainer.read_curve(tmp_path)
    assert [s for s, _ in train_curve] == list(range(1, 10))
    assert train_curve[5] == (6, 0.5)


# ---------------------------------------------------------------- as the UI runs it: a subprocess


def spawn(config: Path, run_dir: Path, resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "finetune.train", str(config), "--run-dir", str(run_dir)]
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "train.log", "ab")  # noqa: SIM115 - closed by the child's exit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd + (["--resume"] if resume else []),
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
    )


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_finishes(tmp_path, steerable_model):
    config = make_config(
        tmp_path, steerable_model, max_steps=60, logging_steps=5, save_steps=10, eval_steps=1000
    )
    run_dir = tmp_path / "run"
    proc = spawn(config, run_dir)
    try:
        wait_for_event(run_dir, "save")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    events = read_events(run_dir)
    assert proc.returncode == -signal.SIGKILL and all(e["event"] != "end" for e in events)
    saved = max(e["step"] for e in events if e["event"] == "save")

    proc = spawn(run_dir / "config.yaml", run_dir, resume=True)
    assert proc.wait(timeout=600) == 0, (run_dir / "train.log").read_text()[-3000:]
    resumed = read_events(run_dir)[len(events) :]
    assert resumed[0]["event"] == "start" and resumed[0]["resumed_from"] >= saved
    assert resumed[-1]["status"] == "done"
    assert [e["step"] for e in resumed if e["event"] == "log"][-1] == 60
    assert (run_dir / "adapter" / "umtcds_adapter.json").is_file()


@pytest.mark.slow
def test_sigterm_to_the_process_group_stops_and_saves(tmp_path, tiny_model_dir):
    config = make_config(tmp_path, tiny_model_dir, max_steps=2000, logging_steps=1, save_steps=1000)
    run_dir = tmp_path / "run"
    proc = spawn(config, run_dir)
    try:
        wait_for_event(run_dir, "log")
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    end = read_events(run_dir)[-1]
    assert end["status"] == "stopped"
    assert re.search(r"signal 15: stopping", (run_dir / "train.log").read_text())
    assert list(run_dir.glob("checkpoint-*/adapter_model.safetensors"))


# ---------------------------------------------------------------- several processes: torchrun, DDP over gloo


def test_a_run_without_torchrun_uses_only_the_first_visible_gpu():
    """Several GPUs seen by one process made the Trainer use DataParallel, which crashed (4 x H200)."""
    pick = trainer.one_gpu_unless_distributed
    assert pick({}) == "0"
    assert pick({"CUDA_VISIBLE_DEVICES": "2,3"}) == "2"
    assert pick({"CUDA_VISIBLE_DEVICES": " 1 , 0"}) == "1"
    assert pick({"CUDA_VISIBLE_DEVICES": "1"}) is None  # already one
    assert pick({"CUDA_VISIBLE_DEVICES": ""}) is None  # no GPU on purpose
    assert pick({"WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "0,1,2,3"}) is None  # torchrun: one per rank


def spawn_torchrun(config: Path, run_dir: Path, resume: bool = False) -> subprocess.Popen:
    """`torchrun --nproc-per-node 2 -m finetune.train ...` in its own process group, as the UI would."""
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "finetune.train"]
    cmd += [str(config), "--run-dir", str(run_dir)] + (["--resume"] if resume else [])
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir / "train.log", "ab")  # noqa: SIM115 - closed by the child's exit
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log, env=env, start_new_session=True)


def trainer_pids(run_dir: Path) -> list[int]:
    """Pids of the rank processes (python -m finetune.train, not the torchrun launcher) of a run."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # the process ended while we looked
        launcher = any(a.endswith(b"/torchrun") for a in args)
        if b"finetune.train" in args and str(run_dir).encode() in args and not launcher:
            pids.append(int(cmdline.parent.name))
    return pids


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].strip().startswith("Z")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_torchrun_two_ranks_stop_on_sigterm_and_resume_to_done(tmp_path, tiny_model_dir):
    """DDP on CPU: rank 0 alone writes events and files; SIGTERM to the group stops both ranks."""
    config = make_config(
        tmp_path, tiny_model_dir, max_steps=40, logging_steps=1, save_steps=1000, batch_size=1
    )
    run_dir = tmp_path / "run"
    proc = spawn_torchrun(config, run_dir)
    try:
        wait_for_event(run_dir, "log")
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=120)  # torchrun itself exits 1 after forwarding a signal; the workers exit 0
        deadline = time.time() + 30
        while group_alive(proc.pid) and time.time() < deadline:
            time.sleep(0.1)
        assert not group_alive(proc.pid), "a rank outlived the stop"
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    log = (run_dir / "train.log").read_text()
    assert log.count("signal 15: stopping at the next step boundary") == 2, log[-3000:]
    events = read_events(run_dir)
    assert [e["event"] for e in events].count("start") == 1  # only rank 0 writes progress
    assert events[-1] == {**events[-1], "event": "end", "status": "stopped"}
    stop_step = events[-2]["step"]
    assert events[-2]["event"] == "save" and (run_dir / f"checkpoint-{stop_step}" / "scheduler.pt").is_file()
    assert stop_step < 40

    # the UI's last resort, SIGKILL to the launcher's group, takes the ranks (own sessions) with it
    proc = spawn_torchrun(run_dir / "config.yaml", run_dir, resume=True)
    try:
        wait_for_event(run_dir, "log", after=len(events))
        ranks = trainer_pids(run_dir)
        assert len(ranks) == 2, ranks
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 30
    while any(pid_alive(pid) for pid in ranks) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(pid_alive(pid) for pid in ranks), "ranks outlived a SIGKILLed torchrun"
    events = read_events(run_dir)

    proc = spawn_torchrun(run_dir / "config.yaml", run_dir, resume=True)
    assert proc.wait(timeout=300) == 0, (run_dir / "train.log").read_text()[-3000:]
    resumed = read_events(run_dir)[len(events) :]
    assert [e["event"] for e in resumed].count("start") == 1
    assert resumed[0]["resumed_from"] == stop_step and resumed[-1]["status"] == "done"
    assert [e["step"] for e in resumed if e["event"] == "log"] == list(range(stop_step + 1, 41))
    assert (run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert not list(run_dir.glob("adapter.partial*"))


# ---------------------------------------------------------------- the embedded SmolLM2 learns campus facts

FACTS_FILE = ROOT / "assets" / "demo_site" / "facts.json"
# fact index in facts.json -> (held-out paraphrase never trained on, the fact the answer must contain)
HELD_OUT = {
    0: ("东湖大学是哪年成立的？", "1923"),
    3: ("理工科专业一年学费多少钱？", "6380"),
    7: ("图书馆电话号码是什么？", "87651234"),
    15: ("国家奖学金一年发多少钱？", "8000"),
    23: ("What do international undergraduate students pay in tuition each year?", "22,000"),
    25: ("How can I call the Office of International Affairs?", "8765-1500"),
    26: ("How frequently does the Nanhu campus shuttle run?", "30 minutes"),
    28: ("What stipend do Summer Research Training Program students get each month?", "1,500"),
}


# P-tuning on SmolLM2 (184k prefix values): 20 full-batch steps, loss ~6.6 -> ~1.1. Measured on CPU:
# char-F1 0.20 -> 0.29. 32 tokens at lr 0.05 for 12 steps collapsed to empty answers (F1 0.0).
PT_TOKENS, PT_LR, PT_STEPS = 16, 0.03, 20


@pytest.fixture()
def two_threads():
    """SmolLM2's matrices are large enough for both cores to pay off (the tiny models' are not)."""
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))


def char_f1(answer: str, reference: str) -> float:
    """Character-level F1 (whitespace ignored): partial credit for moving toward the reference."""
    from collections import Counter

    got, want = Counter(answer.replace(" ", "")), Counter(reference.replace(" ", ""))
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def score_facts(model, tokenizer, references: list[str]) -> dict:
    """Fact score (share of answers containing the fact) and mean char-F1 to the reference answers."""
    answers = [greedy_answer_long(model, tokenizer, q) for q, _ in HELD_OUT.values()]
    hits = [
        fact.replace(",", "") in a.replace(",", "")
        for (_, fact), a in zip(HELD_OUT.values(), answers, strict=True)
    ]
    f1 = [char_f1(a, r) for a, r in zip(answers, references, strict=True)]
    return {"fact": sum(hits) / len(hits), "char_f1": round(sum(f1) / len(f1), 3), "answers": answers}


def train_on_facts(tmp_path: Path, model_dir: Path, **fields) -> tuple[Path, list[str]]:
    """Train the cpu-demo preset on the HELD_OUT facts' original Q/A pairs; (run folder, reference answers)."""
    from blocks.config import load_preset

    facts = json.loads(FACTS_FILE.read_text(encoding="utf-8"))
    pairs = [(facts[i]["question"], facts[i]["answer"]) for i in HELD_OUT]
    cfg = load_preset("cpu-demo")
    cfg.base_model = str(model_dir)
    cfg.dataset_dir = str(write_dataset(tmp_path / "dataset", pairs))
    ptuning = fields.pop("ptuning", {})
    for key, value in fields.items():
        setattr(cfg, key, value)
    for key, value in ptuning.items():
        setattr(cfg.ptuning, key, value)
    cfg.save_steps = cfg.eval_steps = cfg.max_steps
    run_dir = tmp_path / "run"
    assert trainer.main([str(save_config(cfg, tmp_path / "c.yaml")), "--run-dir", str(run_dir)]) == 0
    return run_dir, [a for _, a in pairs]


def compare_base_and_tuned(run_dir: Path, model_dir: Path, references: list[str]) -> tuple[dict, dict]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(run_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32")
    before = score_facts(base, tok, references)
    after = score_facts(PeftModel.from_pretrained(base, run_dir / "adapter"), tok, references)
    print(json.dumps({"base": before, "tuned": after}, ensure_ascii=False, indent=1))
    return before, after


def greedy_answer_long(model, tokenizer, question: str) -> str:
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=40, do_sample=False
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.skipif(not FACTS_FILE.is_file(), reason="the demo site's facts.json is not there yet")
def test_smollm2_lora_answers_held_out_paraphrases_with_trained_facts(
    tmp_path, embedded_model_dir, two_threads
):
    run_dir, references = train_on_facts(tmp_path, embedded_model_dir, max_steps=24, batch_size=4)
    logs = [e for e in read_events(run_dir) if e["event"] == "log"]
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    before, after = compare_base_and_tuned(run_dir, embedded_model_dir, references)
    assert before["fact"] <= 0.125
    assert after["fact"] >= 0.5 and after["fact"] > before["fact"]
    assert after["char_f1"] > before["char_f1"]


@pytest.mark.slow
@pytest.mark.skipif(not FACTS_FILE.is_file(), reason="the demo site's facts.json is not there yet")
def test_smollm2_ptuning_moves_answers_toward_the_trained_ones(tmp_path, embedded_model_dir, two_threads):
    """Issue #6, acceptance 2: after P-tuning v2, held-out paraphrases get answers closer to the trained ones."""
    run_dir, references = train_on_facts(
        tmp_path,
        embedded_model_dir,
        method="ptuning",
        ptuning={"num_virtual_tokens": PT_TOKENS},
        learning_rate=PT_LR,
        max_steps=PT_STEPS,
        batch_size=8,
        logging_steps=2,
    )
    logs = [e for e in read_events(run_dir) if e["event"] == "log"]
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    before, after = compare_base_and_tuned(run_dir, embedded_model_dir, references)
    assert after["answers"] != before["answers"]  # the prefix is used in generation
    assert after["char_f1"] > before["char_f1"] + 0.03, (before["char_f1"], after["char_f1"])
