"""The trainer: LoRA, QLoRA or P-tuning v2 (prefix tuning) on a chat dataset, with HF Trainer + PEFT.

    python -m finetune.train configs/my-lora.yaml --run-dir data/demo/runs/run-1
    python -m finetune.train data/demo/runs/run-1/config.yaml --run-dir data/demo/runs/run-1 --resume
    torchrun --standalone --nproc-per-node 2 -m finetune.train configs/my-lora.yaml --run-dir data/demo/runs/ddp-1

It knows nothing of the UI. It writes, in RUN_DIR: config.yaml (frozen copy), progress.jsonl
(start/log/eval/save/end events), loss.png, checkpoint-<step>/ and adapter/ (see docs/CONTRACTS.md).
SIGTERM (or Ctrl-C) stops at the next step boundary, saves a checkpoint and ends with status
"stopped"; --resume continues from the latest checkpoint with optimizer, scheduler and RNG state.
Loss is computed on the final assistant turn only (its end-of-turn token included), rendered
with the model's own chat template; logits are computed only at those positions and the
cross-entropy in fp32 chunks (docs/TRAINING.md: memory, multi-GPU, stop/resume).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from blocks.config import (
    PLAIN_HEAD_TYPES,
    ConfigError,
    TrainConfig,
    check_environment,
    load_config,
    loss_chunk_rows,
    prefix_dimensions,
    read_model_config,
    resolve_path,
    resolve_switches,
    save_config,
    target_modules,
)
from finetune.data import (
    IGNORE,
    DatasetError,
    collate_batch,
    encode_conversation,
    load_split,
    read_chat_jsonl,
)
from finetune.layers import apply_layer_switches

__all__ = [
    "IGNORE",
    "DatasetError",
    "collate_batch",
    "encode_conversation",
    "load_split",
    "read_chat_jsonl",
    "main",
]

PLOT_EVERY_S = 5.0  # loss.png is redrawn on a log event at most this often (and at the end)


# ---------------------------------------------------------------- progress events and the loss plot


def append_event(run_dir: Path, event: str, **fields) -> None:
    """Append one JSON line to progress.jsonl (one write call, so readers see whole lines).

    A line that a SIGKILL left without its newline is ended first, so this event is never glued
    onto it; no blank line is ever written.
    """
    line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, ensure_ascii=False)
    with open(run_dir / "progress.jsonl", "a+b") as fh:
        size = fh.seek(0, os.SEEK_END)
        torn = size > 0 and os.pread(fh.fileno(), 1, size - 1) != b"\n"
        # backslashreplace: a lone surrogate in an error message becomes a JSON escape, not a crash
        fh.write(("\n" if torn else "").encode() + line.encode("utf-8", "backslashreplace") + b"\n")


def read_events(path: Path) -> list[dict]:
    """The events in a progress.jsonl; blank, torn or corrupt lines (a killed writer) are skipped."""
    data = path.read_bytes() if path.is_file() else b""
    events = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), str):
            events.append(event)
    return events


def read_curve(run_dir: Path) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, eval) loss points; after a resume, points past the checkpoint from the killed attempt are dropped."""
    train: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    for ev in read_events(run_dir / "progress.jsonl"):
        if ev["event"] == "start" and isinstance(ev.get("resumed_from"), int):
            cut = ev["resumed_from"]
            train = [p for p in train if p[0] <= cut]
            evals = [p for p in evals if p[0] <= cut]
        elif ev["event"] == "log" and _is_point(ev, "loss"):
            train.append((ev["step"], ev["loss"]))
        elif ev["event"] == "eval" and _is_point(ev, "eval_loss"):
            evals.append((ev["step"], ev["eval_loss"]))
    return train, evals


def _is_point(event: dict, key: str) -> bool:
    """True when the event has an integer step and a numeric `key` (a plottable point)."""
    step, value = event.get("step"), event.get(key)
    return isinstance(step, int) and isinstance(value, int | float) and not isinstance(value, bool)


def plot_loss(run_dir: Path) -> None:
    """Redraw loss.png (train and eval loss against step), replacing the old one atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_curve(run_dir)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss (dev)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = run_dir / ".loss.tmp.png"
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, run_dir / "loss.png")


def write_adapter_record(folder: Path, cfg: TrainConfig, run_dir: Path) -> None:
    """umtcds_adapter.json: method and base model identity, so chat can find (and check) the base."""
    from blocks.models import model_fingerprint

    base = resolve_path(cfg.base_model)
    record = {
        "method": cfg.method,
        "base_model": cfg.base_model,
        "base_fingerprint": model_fingerprint(base) if (base / "config.json").is_file() else None,
        "run_id": run_dir.name,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = folder / ".umtcds_adapter.json.tmp"
    tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / "umtcds_adapter.json")


def gpu_memory_peak() -> dict:
    """{"gpu_gib": peak GiB this process has held on its GPU} (PyTorch's allocator, CUDA context
    excluded), or {} without CUDA: the Training tab shows it beside the loss."""
    import torch

    if not torch.cuda.is_available():
        return {}
    return {"gpu_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}


def make_progress_callback(run_dir: Path, cfg: TrainConfig, stop_flag: dict, resumed_from: int | None):
    """A TrainerCallback that writes progress events, honours the stop flag and tags checkpoints."""
    from transformers import TrainerCallback

    class ProgressCallback(TrainerCallback):
        last_plot = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                append_event(run_dir, "start", total_steps=state.max_steps, resumed_from=resumed_from)

        def on_step_end(self, args, state, control, **kwargs):
            if stop_requested(stop_flag):
                control.should_training_stop = True
                control.should_save = True  # the Trainer saves a checkpoint before leaving the loop

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                append_event(
                    run_dir,
                    "log",
                    step=state.global_step,
                    loss=logs["loss"],
                    learning_rate=logs.get("learning_rate"),
                    epoch=logs.get("epoch"),
                    **gpu_memory_peak(),
                )
            elif "eval_loss" in logs:
                append_event(run_dir, "eval", step=state.global_step, eval_loss=logs["eval_loss"])
            else:
                return
            if time.monotonic() - self.last_plot > PLOT_EVERY_S:
                plot_loss(run_dir)
                self.last_plot = time.monotonic()

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                plot_loss(run_dir)

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = run_dir / f"checkpoint-{state.global_step}"
                write_adapter_record(folder, cfg, run_dir)
                append_event(run_dir, "save", step=state.global_step, path=folder.name)

    return ProgressCallback()


PROFILE_STEP_ENV = "UMTCDS_PROFILE_STEP"  # diagnostics: profile this optimizer step (docs/TRAINING.md)


def make_profile_callback(run_dir: Path, step: int):
    """A TrainerCallback that profiles optimizer step `step` (1-based) and writes the operators that
    took the time to run_dir/profile.txt (GPU time where there is a GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()

    class ProfileCallback(TrainerCallback):
        prof = None

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step + 1 == step and self.prof is None:
                self.prof = profile(
                    activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
                )
                self.prof.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.prof is None or state.global_step != step:
                return
            if cuda:
                torch.cuda.synchronize()
            self.prof.stop()
            if state.is_world_process_zero:
                sort = "self_device_time_total" if cuda else "self_cpu_time_total"
                table = self.prof.key_averages().table(sort_by=sort, row_limit=30)
                (run_dir / "profile.txt").write_text(f"optimizer step {step}\n{table}\n", encoding="utf-8")

    return ProfileCallback()


def close_process_group() -> None:
    """Tear DDP down before the interpreter exits: left to exit-time destructors, a gloo rank sometimes
    aborted ("terminate called without an active exception", SIGABRT) after a finished run, and torchrun
    then reported the whole run as failed."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def stop_requested(stop_flag: dict) -> bool:
    """The local SIGTERM flag, agreed across DDP ranks so every rank stops at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return stop_flag["stop"]
    import torch

    flag = torch.tensor([1.0 if stop_flag["stop"] else 0.0], device=stop_flag["device"])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


# ---------------------------------------------------------------- model


def peft_config(cfg: TrainConfig, model_config: dict):
    """The PEFT adapter configuration for the method: P-tuning v2 prefix or LoRA (QLoRA too)."""
    from peft import LoraConfig, PrefixTuningConfig, TaskType

    if cfg.method == "ptuning":
        dims = prefix_dimensions(model_config)
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=cfg.ptuning.num_virtual_tokens,
            prefix_projection=cfg.ptuning.prefix_projection,
            encoder_hidden_size=cfg.ptuning.projection_hidden_size,
            num_layers=dims["num_layers"],
            token_dim=dims["token_dim"],
            num_attention_heads=dims["kv_heads"],
        )
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=cfg.lora.rank,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=target_modules(cfg, model_config),
    )


def load_model_and_tokenizer(
    cfg: TrainConfig, precision: str, checkpointing: bool, compile_layers: bool = False
):
    """The base model (4-bit for QLoRA) wrapped in the configured PEFT adapter, and its tokenizer.

    Checkpointing and compilation are applied per decoder layer after PEFT has wrapped the model
    (finetune/layers.py), so P-tuning's prefix survives checkpointing.
    """
    import torch
    from peft import PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = resolve_path(cfg.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if not tokenizer.chat_template:
        raise ConfigError(f"The tokenizer in {base} has no chat template: use an instruct/chat model.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # labels are masked by length, so pad == eos is harmless
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    kwargs: dict = {"dtype": dtype}
    if torch.cuda.is_available():
        # Checkpointed layers are recomputed in backward; cuDNN attention was seen to be chosen there
        # while the forward pass used flash attention (CheckpointError on an H200). One backend for both.
        torch.backends.cuda.enable_cudnn_sdp(False)
    if cfg.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, **kwargs)  # never unpickle
    model_config = model.config.to_dict()
    # QLoRA: no peft.prepare_model_for_kbit_training. It casts every weight left in bf16 to fp32
    # (GLM-4: the 1.24B-parameter embeddings and output layer too), so every loss chunk multiplied in
    # fp32. Without it, GLM-4-9B shape at 4 x 1024 on an H200: 9.9 GiB and 5,951 tokens/s, against
    # ~14 GiB and 4,117 (benchmarks/RESULTS.md). PEFT freezes the base weights as for LoRA, and the
    # trainer's (non-reentrant) checkpointing needs no input gradients.
    if cfg.init_adapter:
        model = PeftModel.from_pretrained(model, resolve_path(cfg.init_adapter), is_trainable=True)
    else:
        model = get_peft_model(model, peft_config(cfg, model_config))
    apply_layer_switches(
        model, cfg.checkpoint_layers if checkpointing else 0, compile_layers, cfg.torch_compile == "auto"
    )
    return model, tokenizer


# ---------------------------------------------------------------- memory-efficient loss and batching


def label_positions(labels):
    """Sequence positions whose next token is trained in any row: the only logits the loss needs."""
    keep = (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(1)
    return keep if keep.numel() else labels.new_zeros(1)  # nothing trained: one position, loss 0


def chunked_cross_entropy(logits, targets, chunk: int | None = None, head=None):
    """Summed token cross-entropy in fp32, `chunk` rows at a time.

    Each chunk is checkpointed: its fp32 log-softmax is recomputed in backward instead of stored, so
    no fp32 copy of the whole [tokens, vocab] logits ever exists (GLM-4: 151,552 columns). With
    `head` (the output Linear layer), `logits` are the final hidden states instead and each chunk's
    logits are computed, and recomputed in backward, inside its chunk: no [tokens, vocab] tensor at all.
    """
    import torch
    from torch.nn.functional import cross_entropy, linear
    from torch.utils.checkpoint import checkpoint

    def chunk_sum(x, y):
        if head is not None:
            # under bf16 the Trainer (accelerate) hands back the model's outputs in fp32
            x = linear(x.to(head.weight.dtype), head.weight, head.bias)
        return cross_entropy(x.float(), y, ignore_index=IGNORE, reduction="sum")

    chunk = chunk or loss_chunk_rows(logits.shape[-1] if head is None else head.weight.shape[0])
    total = torch.zeros((), dtype=torch.float32, device=logits.device)
    # split, not slicing: its backward concatenates the chunks' gradients once instead of
    # materialising a full-size zero gradient per chunk
    pieces = zip(
        logits.reshape(-1, logits.shape[-1]).split(chunk), targets.reshape(-1).split(chunk), strict=True
    )
    for x, y in pieces:
        if torch.is_grad_enabled() and x.requires_grad:
            total = total + checkpoint(chunk_sum, x, y, use_reentrant=False)
        else:
            total = total + chunk_sum(x, y)
    return total


def plain_output_head(model):
    """The base model's output Linear when the loss may apply it itself (chunk by chunk), else None."""
    import torch

    model = getattr(model, "module", model)  # under DDP the Trainer hands the loss the wrapper
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "lm_head", None)
    config = base.config
    if (
        type(head) is torch.nn.Linear  # a LoRA-wrapped or quantised head is left to the model
        and config.model_type in PLAIN_HEAD_TYPES
        and not getattr(config, "final_logit_softcapping", None)
        and getattr(config, "logit_scale", None) in (None, 1.0)
    ):
        return base, head
    return None


def accepts_logits_to_keep(model) -> bool:
    """True when the (PEFT-wrapped) model's forward can compute logits at chosen positions only."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def causal_lm_loss(model, inputs: dict, num_items=None, select: bool = True):
    """(mean loss over trained tokens, model outputs), with logits computed only at trained positions.

    `num_items` is the Trainer's count of trained tokens over the accumulated (and DDP-gathered)
    batch; without it the loss is this batch's mean, like `model(..., labels=...)`. `select=False`
    is for models without `logits_to_keep` (remote code): all logits, sliced afterwards.
    """
    import torch

    labels = inputs["labels"]
    keep = label_positions(labels)
    # use_cache=False: no key/value copies for a cache nobody reads (P-tuning's prefix cache is still used)
    batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
    # PEFT's prefix-tuning and LoRA forwards pass extra kwargs through to the base model's forward.
    plain = plain_output_head(model) if select else None
    head = None
    if plain is not None:
        # The model's lm_head is swapped for an identity during the forward, so its "logits" are the
        # final hidden states at the kept positions; the loss applies the head chunk by chunk.
        base, head = plain
        base.lm_head = torch.nn.Identity()
        try:
            outputs = model(**batch, logits_to_keep=keep)
        finally:
            base.lm_head = head
    else:
        outputs = model(**batch, logits_to_keep=keep) if select else model(**batch)
    if not select:
        outputs.logits = outputs.logits[:, keep]
    targets = labels[:, 1:][:, keep]
    total = chunked_cross_entropy(outputs.logits, targets, head=head)
    if head is not None:
        outputs.logits = None  # they were hidden states; the logits only ever existed chunk by chunk
    denominator = num_items if num_items is not None else (targets != IGNORE).sum().clamp(min=1)
    return total / denominator, outputs


def make_trainer(**kwargs):
    """An HF Trainer with the chunked loss and, if asked, seeded length-grouped batches."""
    import torch
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class SeededLengthGroupedSampler(LengthGroupedSampler):
        """Length-grouped order fixed by seed and epoch: the same on every DDP rank and after a resume
        (the stock sampler draws from the global RNG, so a mid-epoch resume skipped the wrong batches)."""

        def __init__(self, batch_size: int, lengths: list[int], seed: int) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed = seed
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(self.seed + epoch)

    class ChunkedLossTrainer(Trainer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.model_accepts_loss_kwargs = True  # compute_loss below uses num_items_in_batch
            self.select_logits = accepts_logits_to_keep(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, outputs = causal_lm_loss(model, inputs, num_items_in_batch, self.select_logits)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                # num_items counts every rank's tokens and DDP averages gradients: as Trainer.compute_loss
                loss = loss * self.accelerator.num_processes
            return (loss, outputs) if return_outputs else loss

        def _load_optimizer_and_scheduler(self, checkpoint):
            if checkpoint is None or self.args.device.type != "cpu" or self.args.world_size == 1:
                return super()._load_optimizer_and_scheduler(checkpoint)
            # DDP on CPU: the Trainer maps the state to device "cpu:<rank>", which torch.load rejects
            folder = Path(checkpoint)
            state = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
            self.optimizer.load_state_dict(state)
            self.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if not self.args.group_by_length:
                return super()._get_train_sampler(train_dataset)
            size = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
            lengths = [len(r["input_ids"]) for r in dataset]
            return SeededLengthGroupedSampler(size, lengths, self.args.seed)

    return ChunkedLossTrainer(**kwargs)


# ---------------------------------------------------------------- the run


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step checkpoint-<step>/ that finished saving (has trainer_state.json)."""
    done = [p for p in run_dir.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def train(cfg: TrainConfig, run_dir: Path, resume: bool, stop_flag: dict) -> str:
    """Train and save; returns the end status ("done" or "stopped")."""
    import torch
    from transformers import TrainingArguments, set_seed

    cuda = torch.cuda.is_available()
    switches = resolve_switches(cfg, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    import importlib.util

    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    problems = check_environment(cfg, read_model_config(cfg.base_model), cuda=cuda, has_bitsandbytes=has_bnb)
    if problems:
        raise ConfigError(" ".join(problems))
    set_seed(cfg.seed)
    model, tokenizer = load_model_and_tokenizer(
        cfg, switches["precision"], switches["gradient_checkpointing"], switches["torch_compile"]
    )
    dataset_dir = resolve_path(cfg.dataset_dir)
    train_set = load_split(dataset_dir, "train", tokenizer, cfg)
    if not train_set:
        raise DatasetError(
            f"{dataset_dir / 'train.jsonl'} is missing or empty: build the dataset first (tab 5)."
        )
    dev_set = load_split(dataset_dir, "dev", tokenizer, cfg)
    if not dev_set:
        print("note: no dev.jsonl records, so no eval loss is reported", flush=True)
    if switches["torch_compile"]:
        print("note: compiling the decoder layers: the first step takes about a minute longer", flush=True)
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if resume and checkpoint is None:
        print("note: --resume found no complete checkpoint; starting from step 0", flush=True)
    args = TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        warmup_ratio=cfg.warmup_ratio,
        lr_scheduler_type=cfg.lr_scheduler,
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if dev_set else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        bf16=switches["precision"] == "bf16",
        fp16=switches["precision"] == "fp16",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not cuda,
        ddp_find_unused_parameters=False,
        # under torchrun without CUDA (CPU tests, CPU clusters) DDP talks over gloo
        ddp_backend="gloo" if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
        group_by_length=cfg.group_by_length,
        prediction_loss_only=True,  # eval needs the loss only: no logits gathered
    )
    stop_flag["device"] = args.device
    resumed_from = None
    if checkpoint is not None:
        resumed_from = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    callbacks = [make_progress_callback(run_dir, cfg, stop_flag, resumed_from)]
    if os.environ.get(PROFILE_STEP_ENV, "").isdigit():
        callbacks.append(make_profile_callback(run_dir, int(os.environ[PROFILE_STEP_ENV])))
    trainer = make_trainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=dev_set or None,
        data_collator=lambda batch: collate_batch(batch, tokenizer.pad_token_id),
        processing_class=tokenizer,  # saved into every checkpoint, chat template included
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop_requested(stop_flag):
        return "stopped"  # the checkpoint just saved is the result; adapter/ is for finished runs
    if trainer.is_world_process_zero():
        save_final_adapter(trainer, cfg, run_dir)
    return "done"


def save_final_adapter(trainer, cfg: TrainConfig, run_dir: Path) -> None:
    """Write adapter/ (PEFT weights, tokenizer + chat template, umtcds_adapter.json), replacing any old one."""
    import shutil

    tmp = run_dir / "adapter.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    for junk in ("training_args.bin",):
        (tmp / junk).unlink(missing_ok=True)
    write_adapter_record(tmp, cfg, run_dir)
    final = run_dir / "adapter"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)  # a reader never sees a half-written adapter/


def describe_failure(exc: BaseException) -> str:
    """The end event's error text; out-of-memory says what to change."""
    text = f"{type(exc).__name__}: {exc}"
    if "out of memory" in str(exc).lower() or type(exc).__name__ == "OutOfMemoryError":
        return (
            "Out of memory: lower batch_size (raise grad_accum to keep the effective batch), lower "
            "max_input_length/max_output_length, turn gradient checkpointing on (LoRA), or use QLoRA. "
            f"({text})"
        )
    return text


def die_with_torchrun() -> None:
    """Under torchrun, exit when the launcher dies: it starts each rank in its own session, so a
    SIGKILL to the launcher's process group (the UI's last resort) would otherwise orphan the ranks."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def one_gpu_unless_distributed(env) -> str | None:
    """Without torchrun, train on the first visible GPU only; returns the CUDA_VISIBLE_DEVICES to set.

    With several GPUs visible to one process the Trainer wraps the model in nn.DataParallel, which
    is slower than DDP and crashed at the first step with checkpointed layers (PyTorch internal
    assert in DataParallel's worker threads, 4 x H200). Several GPUs: torchrun (docs/TRAINING.md).
    """
    if "WORLD_SIZE" in env:
        return None
    visible = env.get("CUDA_VISIBLE_DEVICES")
    first = (visible if visible is not None else "0").split(",")[0].strip()
    return first if first != visible else None


def main(argv: list[str] | None = None) -> int:
    # before anything touches CUDA: the device list is read once, at CUDA's initialisation
    only = one_gpu_unless_distributed(os.environ)
    if only is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = only
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", type=Path, help="config YAML (see python -m blocks.config)")
    parser.add_argument("--run-dir", type=Path, required=True, help="run folder (created if missing)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the latest checkpoint in --run-dir"
    )
    args = parser.parse_args(argv)
    die_with_torchrun()
    # fewer fragmented allocator blocks: the peak the card sees stays closer to what tensors use
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    run_dir = args.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    is_main = int(os.environ.get("RANK", "0")) == 0
    stop_flag = {"stop": False, "device": "cpu"}

    def request_stop(signum, frame):
        print(f"signal {signum}: stopping at the next step boundary and saving", flush=True)
        stop_flag["stop"] = True

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        cfg = load_config(args.config)
        frozen = run_dir / "config.yaml"
        if is_main and not (args.resume and frozen.is_file()):
            save_config(cfg, frozen)
        status = train(cfg, run_dir, args.resume, stop_flag)
    except Exception as exc:  # recorded for the UI, printed in full to train.log, then a non-zero exit
        traceback.print_exc()
        if is_main:
            append_event(run_dir, "end", status="failed", error=describe_failure(exc))
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_process_group()
    if is_main:
        append_event(run_dir, "end", status=status, error=None)
        print(f"{status}: {run_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
