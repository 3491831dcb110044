"""GPU training check and throughput: the seed recipe vs the project's trainer, same model, same call.

    python benchmarks/train_throughput.py --out DIR [--layers 40] [--steps 8] [--only seed,lora,ptuning]

Builds a GLM-4-9B-shaped model (GlmConfig: vocab 151552, hidden 4096, 40 layers, 32 heads, 2 KV heads)
with random bf16 weights on the GPU (throughput and memory do not depend on weight values), saves it
with the tiny test tokenizer (ChatML template), writes a synthetic chat dataset, then:
- seed: the seed's recipe in-process (LoRA r8 on q/k/v, batch 1 x 1025 tokens, gradient checkpointing,
  torch.cuda.empty_cache() every step);
- lora / ptuning: `python -m finetune.train CONFIG.yaml --run-dir ...` exactly as the app runs it.
Tokens/s counts every token of each trained sequence; peak memory is nvidia-smi's reading (allocator
cache + CUDA context) sampled every 200 ms, plus torch's max_memory_allocated where in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


class GpuMemoryPoller:
    """Peaks (MiB) sampled from nvidia-smi every 200 ms while the context is open, on the run's first
    GPU: `peak_mib`, everything the card holds (memory.used), and `peak_others_mib`, what processes
    other than this one hold there (the trainer a plan starts, without the memory this process kept
    after timing the in-process recipes)."""

    def __init__(self) -> None:
        self.peak_mib = 0
        self.peak_others_mib = 0
        self._stop = threading.Event()

    def _query(self, gpu: str, what: str) -> list[list[str]]:
        out = subprocess.run(
            ["nvidia-smi", "-i", gpu, f"--query-{what}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
        ).stdout
        return [[v.strip() for v in line.split(",")] for line in out.splitlines() if line.strip()]

    def _run(self) -> None:
        import shutil

        if shutil.which("nvidia-smi") is None:  # --tiny on a CPU machine: nothing to sample
            return
        # the run's first GPU (nvidia-smi ignores CUDA_VISIBLE_DEVICES; set CUDA_DEVICE_ORDER=PCI_BUS_ID
        # so that both number the GPUs alike when plans run side by side on one host)
        first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
        me = str(os.getpid())
        while not self._stop.is_set():
            used = [int(r[0]) for r in self._query(first, "gpu=memory.used") if r[0].isdigit()]
            if used:
                self.peak_mib = max(self.peak_mib, used[0])
            apps = self._query(first, "compute-apps=pid,used_memory")
            others = sum(int(r[1]) for r in apps if len(r) == 2 and r[1].isdigit() and r[0] != me)
            self.peak_others_mib = max(self.peak_others_mib, others)
            time.sleep(0.2)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


GLM4_9B_SHAPE = {"vocab_size": 151552, "hidden_size": 4096, "intermediate_size": 13696,
                 "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128}  # fmt: skip
# --tiny: the same code paths on a CPU in seconds (a smoke test of this script, not a measurement)
TINY_SHAPE = {"vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16}  # fmt: skip


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(folder: Path, layers: int, shape: dict = GLM4_9B_SHAPE) -> None:
    """Save a random GLM-4-9B-shaped model (bf16 on a GPU) plus the tiny ChatML tokenizer to `folder`."""
    import torch
    from tiny import build_tiny_tokenizer
    from transformers import GlmConfig, GlmForCausalLM

    if (folder / "config.json").is_file():
        return
    config = GlmConfig(
        **shape,
        num_hidden_layers=layers,
        max_position_embeddings=8192,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=1,
    )
    torch.manual_seed(0)
    with torch.device(device()):
        model = GlmForCausalLM(config)
    if device() == "cuda":
        model = model.to(torch.bfloat16)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
    model.save_pretrained(folder, safe_serialization=True)
    build_tiny_tokenizer().save_pretrained(folder)
    del model
    if device() == "cuda":
        torch.cuda.empty_cache()


def write_dataset(folder: Path, records: int = 128, words_per_turn: int = 1500) -> None:
    """Chat records long enough to be truncated to max_input/max_output tokens."""
    import random

    rng = random.Random(0)
    words = "library canteen dormitory scholarship registrar deadline 2025 campus notice office".split()
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", records), ("dev", 4), ("test", 4)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for _ in range(n):
                q = " ".join(rng.choice(words) for _ in range(words_per_turn))
                a = " ".join(rng.choice(words) for _ in range(words_per_turn))
                msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
                fh.write(json.dumps({"messages": msgs}) + "\n")


def time_in_process(
    model_dir: Path, wrap, steps: int, seq: int, accum: int = 1, lr: float = 1e-4, empty_cache: bool = False
) -> dict:
    """Load the model, `wrap` it (PEFT), and time optimizer steps of `accum` micro-batches of
    1 x `seq` random tokens with the model's own loss; the first two steps are warm-up."""  # fmt: skip
    import torch
    from transformers import AutoModelForCausalLM

    cuda = device() == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16 if cuda else torch.float32, device_map=device()
    )
    model = wrap(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    vocab = model.config.vocab_size
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    times = []
    with GpuMemoryPoller() as poll:
        for step in range(steps + 2):
            sync()
            t = time.perf_counter()
            for _ in range(accum):
                ids = torch.randint(100, vocab - 1, (1, seq), device=device())
                (model(input_ids=ids, labels=ids).loss / accum).backward()
            opt.step()
            opt.zero_grad()
            if cuda and empty_cache:
                torch.cuda.empty_cache()
            sync()
            if step >= 2:
                times.append(time.perf_counter() - t)
    step_s = sum(times) / len(times)
    result = {
        "tokens_per_s": seq * accum / step_s,
        "seq": seq,
        "step_s": step_s,
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "peak_smi_gib": poll.peak_mib / 1024,
        "gpus": 1,
    }
    del model, opt
    if cuda:
        torch.cuda.empty_cache()
    return result


def run_seed_recipe(model_dir: Path, steps: int, seq: int = 1025) -> dict:
    """The seed's LoRA recipe in-process: r8 q/k/v, batch 1 x 1025, checkpointing, empty_cache each step."""
    from peft import LoraConfig, get_peft_model

    def wrap(model):
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
        return get_peft_model(
            model, LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj"])
        )

    result = time_in_process(model_dir, wrap, steps, seq, empty_cache=True)
    return {"recipe": f"seed: LoRA r8 qkv, 1 x {seq}, ckpt, empty_cache", **result}


def run_plain_ptuning(model_dir: Path, steps: int, seq: int = 641, prefix: int = 512, accum: int = 4) -> dict:
    """Issue 8's P-tuning comparator, plain PEFT in-process: prefix tuning with 512 virtual tokens,
    micro-batch 1 x 641 tokens (128 + 512 + 1), no checkpointing (it crashes there), the model's own
    loss, 4 micro-batches accumulated per optimizer step."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from blocks.config import prefix_dimensions

    def wrap(model):
        dims = prefix_dimensions(model.config.to_dict())
        config = PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=prefix,
            num_layers=dims["num_layers"],
            token_dim=dims["token_dim"],
            num_attention_heads=dims["kv_heads"],
        )
        return get_peft_model(model, config)

    result = time_in_process(model_dir, wrap, steps, seq, accum=accum, lr=1e-2)
    return {
        "recipe": f"plain PEFT P-tuning {prefix} vt, 1 x {seq} x accum {accum}",
        "prefix": prefix,
        **result,
    }


def run_project(
    model_dir: Path,
    data_dir: Path,
    out: Path,
    name: str,
    overrides: dict,
    steps: int,
    nproc: int = 1,
    profile: bool = False,
) -> dict:
    """Run finetune.train as the app does (under torchrun when nproc > 1); step times from progress.jsonl.
    `profile`: one more step, profiled (its top operators are printed) and left out of the timing."""
    import yaml

    from blocks.config import load_config
    from finetune.train import encode_conversation, read_chat_jsonl

    cfg_dict = {
        "base_model": str(model_dir),
        "dataset_dir": str(data_dir),
        "max_steps": steps + 3 + profile,
        "logging_steps": 1,
        "eval_steps": 100000,
        "save_steps": 100000,
        "warmup_ratio": 0.0,
        **overrides,
    }
    cfg_path = out / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(cfg_path)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    first = read_chat_jsonl(data_dir / "train.jsonl")[0]
    seq = len(encode_conversation(first, tok, cfg.max_input_length, cfg.max_output_length)["input_ids"])
    run_dir = out / f"run-{name}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if profile:
        from finetune.train import PROFILE_STEP_ENV

        env[PROFILE_STEP_ENV] = str(cfg_dict["max_steps"])
    with GpuMemoryPoller() as poll, open(out / f"{name}.log", "w") as log:
        launcher = (
            [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
            if nproc > 1
            else [sys.executable]
        )
        proc = subprocess.run(
            [*launcher, "-m", "finetune.train", str(cfg_path), "--run-dir", str(run_dir)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    progress = run_dir / "progress.jsonl"
    events = [json.loads(x) for x in progress.read_text().splitlines()] if progress.is_file() else []
    end = [e for e in events if e["event"] == "end"]
    logs = [e for e in events if e["event"] == "log"]
    result = {
        "recipe": name,
        "overrides": overrides,
        "exit": proc.returncode,
        "end": end[-1] if end else None,
    }
    if proc.returncode or not end or end[-1].get("status") != "done":  # keep going; show why in the table
        result["log_tail"] = (out / f"{name}.log").read_text(errors="replace")[-2000:]
        print(f"{name} did not finish: exit {proc.returncode}\n{result['log_tail']}", flush=True)
    timed = logs[:-1] if profile else logs
    if len(timed) >= 4:
        # skip the first two logged steps (CUDA warm-up, allocator growth)
        span = timed[-1]["time"] - timed[1]["time"]
        n = timed[-1]["step"] - timed[1]["step"]
        per_step = cfg.batch_size * cfg.grad_accum * seq * nproc
        result.update(tokens_per_step=per_step, step_s=span / n, tokens_per_s=per_step * n / span)
    if (run_dir / "profile.txt").is_file():
        print(
            f"{name}: where one step's time went\n{(run_dir / 'profile.txt').read_text()}",
            flush=True,
        )
    result["seq"] = seq
    result["prefix"] = cfg.ptuning.num_virtual_tokens if cfg.method == "ptuning" else 0
    result["peak_smi_gib"] = poll.peak_mib / 1024
    result["peak_trainer_gib"] = poll.peak_others_mib / 1024  # the trainer process alone (nvidia-smi)
    # the trainer's own reading: PyTorch's reserved peak on rank 0 (no CUDA context)
    result["peak_reserved_gib"] = max((e.get("gpu_gib") or 0 for e in logs), default=0)
    result["first_loss"] = logs[0]["loss"] if logs else None
    result["last_loss"] = logs[-1]["loss"] if logs else None
    return result


PEAK_BF16 = 989e12  # H100 SXM dense bf16 FLOP/s (the convention; H200 has the same compute)


def mfu_fraction(tokens_per_s: float, params: float, layers: int, result: dict) -> float:
    """Model FLOPs utilisation, issue 8's convention: 4 x parameters per token (forward, and a backward
    that computes input gradients only: the base weights are frozen) plus causal attention,
    3 x 4 x layers x keys x 4096 per token (keys: seq / 2 + the P-tuning prefix). Work recomputed under
    checkpointing is not counted."""
    keys = result.get("seq", 1025) / 2 + result.get("prefix", 0)  # keys a query sees on average
    per_token = 4 * params + 3 * 4 * layers * keys * 4096
    return tokens_per_s * per_token / PEAK_BF16


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/glm9b"))
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--only", default="seed,lora,ptuning")
    parser.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help='an extra plan: config overrides, optionally {"base": PLAN, ...} to start from a named one '
        "(run it by listing NAME in --only)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="one more step in each project plan, profiled (top operators printed, not timed)",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test on any machine: a 2-layer model, short sequences"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    if args.tiny:
        args.layers, args.model_dir = 2, args.out / "tiny-model"
    name = torch.cuda.get_device_name() if device() == "cuda" else "cpu"
    import peft
    import transformers

    versions = f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}"
    print(f"{versions}, {name}", flush=True)
    build_model(args.model_dir, args.layers, TINY_SHAPE if args.tiny else GLM4_9B_SHAPE)
    from math import prod

    from safetensors import safe_open

    params = 0
    for shard in args.model_dir.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as fh:
            params += sum(prod(fh.get_slice(k).get_shape()) for k in fh.keys())
    data_dir = args.out / "dataset"
    write_dataset(data_dir, words_per_turn=40 if args.tiny else 1500)
    wanted = args.only.split(",")
    results = []
    if "seed" in wanted:
        results.append(run_seed_recipe(args.model_dir, args.steps, seq=65 if args.tiny else 1025))
        print(results[-1], flush=True)
    if "plain-ptuning" in wanted:
        tiny = {"seq": 41, "prefix": 8} if args.tiny else {}
        results.append(run_plain_ptuning(args.model_dir, args.steps, **tiny))
        print(results[-1], flush=True)
    lora = {
        "method": "lora",
        "batch_size": 4,
        "grad_accum": 1,
        "max_input_length": 512,
        "max_output_length": 512,
        "gradient_checkpointing": "on",
    }
    ptuning = {
        "method": "ptuning",
        "ptuning": {"num_virtual_tokens": 512},
        "max_input_length": 128,
        "max_output_length": 512,
    }
    plans = {
        # the gpu-24gb preset's shape: LoRA (all linear layers), checkpointing, 4 x 1024 tokens
        "lora": lora,
        "lora-compile": {**lora, "torch_compile": "on"},
        "lora-compile-d0": {**lora, "torch_compile": "on", "lora": {"dropout": 0.0}},
        "lora-compile-d0-b2": {**lora, "torch_compile": "on", "lora": {"dropout": 0.0}, "batch_size": 2,
                               "grad_accum": 2},
        "lora-compile-ckpt36": {**lora, "torch_compile": "on", "checkpoint_layers": 36},
        # no memory budget: no checkpointing (issue 8 goal 2, MFU)
        "lora-nockpt": {**lora, "gradient_checkpointing": "off"},
        "lora-nockpt-compile": {**lora, "gradient_checkpointing": "off", "torch_compile": "on"},
        # the seed's P-tuning defaults: 512 virtual tokens, 128 + 512 tokens, effective batch 4
        "ptuning": {**ptuning, "batch_size": 1, "grad_accum": 4, "gradient_checkpointing": "off"},
        "ptuning-ckpt": {**ptuning, "batch_size": 4, "grad_accum": 1, "gradient_checkpointing": "on"},
        "ptuning-ckpt32": {**ptuning, "batch_size": 4, "grad_accum": 1, "gradient_checkpointing": "on",
                           "checkpoint_layers": 32},
        "ptuning-ckpt-compile": {**ptuning, "batch_size": 4, "grad_accum": 1, "gradient_checkpointing": "on",
                                 "torch_compile": "on"},
        # 24 GB budget, fewer recomputed layers: micro-batch 1 x 1024 (accumulate 4), no LoRA dropout
        # (no masks or dropped copies kept), compiled layers, only the first 16 layers checkpointed
        "lora-b1": {**lora, "batch_size": 1, "grad_accum": 4, "lora": {"dropout": 0.0}, "torch_compile": "on",
                    "checkpoint_layers": 16},
    }  # fmt: skip
    for spec in args.plan:
        name, _, text = spec.partition("=")
        try:
            extra = json.loads(text)
            plans[name] = {**plans[extra.pop("base", "lora")], **extra}
        except (ValueError, KeyError, AttributeError) as exc:
            parser.error(
                f"--plan {spec!r}: expected NAME={{JSON object}} with an optional known base ({exc})"
            )
    plans["lora-ddp"] = plans["lora"]  # a plan named *-ddp runs on every GPU (torchrun)
    plans["lora-compile-d0-ddp"] = plans["lora-compile-d0"]
    if args.tiny:  # same switches, toy sizes
        for plan in plans.values():
            plan.update(max_input_length=32, max_output_length=32)
            if "ptuning" in plan:
                plan["ptuning"] = {"num_virtual_tokens": 8}
            if "checkpoint_layers" in plan:
                plan["checkpoint_layers"] = 1
    unknown = set(wanted) - set(plans) - {"seed", "plain-ptuning"}
    if unknown:
        parser.error(f"unknown plans {sorted(unknown)}; choose from seed, plain-ptuning, {', '.join(plans)}")
    for name, overrides in plans.items():
        if name in wanted:
            gpus = torch.cuda.device_count() if device() == "cuda" else 2  # CPU: torchrun over gloo
            nproc = gpus if name.endswith("-ddp") else 1
            results.append(
                run_project(
                    args.model_dir, data_dir, args.out, name, overrides, args.steps, nproc, args.profile
                )
            )
            results[-1]["gpus"] = nproc
            print(results[-1], flush=True)
            # after every plan: a device call cut short still returns what finished
            (args.out / "train_throughput.json").write_text(json.dumps(results, indent=2))
    (args.out / "train_throughput.json").write_text(json.dumps(results, indent=2))
    # torch: PyTorch's own peak (in-process recipes: allocated; the trainer: reserved by its allocator)
    # smi: the whole card by nvidia-smi; run: the trainer process alone by nvidia-smi (in-process
    # recipes: the whole card, which only they use then)
    print(
        f"\n{'recipe':40} {'tokens/s':>9} {'step s':>7} {'MFU %':>6} {'smi GiB':>8} {'run GiB':>8}"
        f" {'torch GiB':>9}"
    )
    for r in results:
        mfu = 100 * mfu_fraction(r.get("tokens_per_s", 0) / r.get("gpus", 1), params, args.layers, r)
        torch_gib = r.get("peak_reserved_gib", r.get("peak_alloc_gib", 0.0))
        print(
            f"{r['recipe'][:40]:40} {r.get('tokens_per_s', 0):9.0f} {r.get('step_s', 0):7.3f} {mfu:6.1f}"
            f" {r['peak_smi_gib']:8.1f} {r.get('peak_trainer_gib', r['peak_smi_gib']):8.1f} {torch_gib:9.1f}"
        )


if __name__ == "__main__":
    main()
