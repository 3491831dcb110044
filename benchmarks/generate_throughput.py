"""Local generation throughput: output tokens/s of batched vs one-at-a-time generation, same prompts.

Both sides use blocks.llm.generate_ids (left-padded batch; the baseline calls it with one prompt at a
time, as the seed did). Every sequence generates exactly --new-tokens tokens (min = max), so the
token counts are equal and only the wall time differs.

    .venv/bin/python benchmarks/generate_throughput.py                  # embedded SmolLM2 on CPU, batch 8
    .venv/bin/python benchmarks/generate_throughput.py --threads 1      # steadier on a busy machine
    python benchmarks/generate_throughput.py --glm4 --batch 32          # GPU: GLM-4-9B-shaped model, random weights
    python benchmarks/generate_throughput.py --glm4 --check-unload      # also: memory_allocated before/after unload
Writes benchmarks/_out/local_generation[_glm4].json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from blocks import llm  # noqa: E402

QUESTIONS = [
    "东湖大学图书馆几点开门？",
    "What is the tuition fee for engineering majors at Eastlake University?",
    "请根据下面的内容生成三个问答对：学校共有食堂5个，可同时容纳1.2万人就餐，全部实行校园卡和手机扫码支付。",
    "When is the scholarship application deadline?",
    "东湖大学本科生宿舍的住宿费是多少？四人间和六人间有什么区别？请详细说明。",
    "Summarise: The library opens at 8:00 and closes at 22:00; during exam weeks it stays open until 24:00.",
    "校医院的急诊电话是多少？",
    "Write two questions a new international student might ask about the Eastlake University dormitories.",
]


def timed(fn) -> float:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def embedded_prompts(batch: int) -> tuple[object, list[list[int]], int]:
    """The embedded SmolLM2 (fp32 on CPU) and `batch` chat prompts of varied length."""
    from blocks.models import prepare_default_model

    path = str(prepare_default_model())
    client = llm.LocalClient(path)
    model, tokenizer = llm.load_local_model(path)
    qs = (QUESTIONS * (batch // len(QUESTIONS) + 1))[:batch]
    prompts = [client.encode_chat([{"role": "user", "content": q}]) for q in qs]
    return model, prompts, tokenizer.pad_token_id


def glm4_prompts(batch: int, prompt_len: int) -> tuple[object, list[list[int]], int]:
    """A GLM-4-9B-shaped model (random bf16 weights) on the GPU and random prompts of `prompt_len` tokens."""
    import torch
    from train_throughput import GLM4_9B_SHAPE  # the same model shape as the training benchmark
    from transformers import AutoModelForCausalLM, GlmConfig

    config = GlmConfig(
        **GLM4_9B_SHAPE,
        num_hidden_layers=40,
        max_position_embeddings=8192,
        pad_token_id=0,
        eos_token_id=151329,
    )
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 150000, (prompt_len,), generator=gen).tolist() for _ in range(batch)]
    return model, prompts, 0


def profile_static(fn) -> str:
    """One profiled call: the operators that take the time, and how many CUDA graphs were replayed
    (one per decoding step when the compiled step really runs as a graph)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        fn()
    events = prof.key_averages()
    launches = sum(e.count for e in events if "cudaGraphLaunch" in e.key)
    sort = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    return f"CUDA graph launches: {launches}\n" + events.table(sort_by=sort, row_limit=15)


def check_unload() -> dict:
    """Load a ~0.5 GB model folder through blocks.llm, unload it, and report GPU memory around it."""
    import tempfile

    import torch
    from tiny import build_tiny_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    folder = build_tiny_model(Path(tempfile.mkdtemp()) / "model")
    config = LlamaConfig.from_pretrained(folder)
    config.hidden_size, config.intermediate_size, config.num_hidden_layers = 2048, 5632, 8
    config.num_attention_heads, config.num_key_value_heads = 16, 4
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    before = torch.cuda.memory_allocated()
    client = llm.LocalClient(str(folder), batch_size=4)
    client.chat_batch([[{"role": "user", "content": "library"}]] * 4, max_tokens=8)
    loaded = torch.cuda.memory_allocated()
    dtype = str(next(llm.load_local_model(str(folder))[0].parameters()).dtype)
    llm.unload_local_models()
    after = torch.cuda.memory_allocated()
    return {
        "before_mib": before / 2**20,
        "loaded_mib": loaded / 2**20,
        "after_unload_mib": after / 2**20,
        "dtype": dtype,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--glm4", action="store_true", help="GLM-4-9B-shaped model on the GPU")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=512, help="--glm4 prompt length")
    parser.add_argument("--baseline-prompts", type=int, default=0, help="one-at-a-time prompts (0 = all)")
    parser.add_argument("--check-unload", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch default)")
    parser.add_argument(
        "--static",
        action="store_true",
        help="also time the batch with the product's static KV cache path (compiled step, CUDA graphs)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="with --static: profile one more static call and print where the time goes "
        "(top operators, CUDA graph launches)",
    )
    parser.add_argument(
        "--hf-static",
        action="store_true",
        help="also time transformers' own static-cache generate (compiles its decoding step)",
    )
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    result: dict = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }
    if args.check_unload:
        result["unload"] = check_unload()
        print("unload check:", result["unload"])
    if args.glm4:
        model, prompts, pad = glm4_prompts(args.batch, args.prompt_len)
    else:
        model, prompts, pad = embedded_prompts(args.batch)
    n = args.new_tokens

    def gen(ps, static_rows=0):
        outs = llm.generate_ids(model, ps, pad, n, min_new_tokens=n, static_rows=static_rows)
        assert all(len(o) == n for o in outs)

    gen(prompts[:1])  # warm-up (kernels, caches)
    base = prompts[: args.baseline_prompts or len(prompts)]
    t_one = timed(lambda: [gen([p]) for p in base])
    t_batch = timed(lambda: gen(prompts))
    one_tps = len(base) * n / t_one
    batch_tps = len(prompts) * n / t_batch
    print(
        f"one at a time: {one_tps:.1f} tokens/s; batch {len(prompts)}: {batch_tps:.1f} tokens/s", flush=True
    )
    rows = [
        {
            "mode": "one at a time",
            "sequences": len(base),
            "new_tokens": n,
            "wall_s": t_one,
            "tokens_per_s": one_tps,
        },
        {
            "mode": f"batch {len(prompts)}",
            "sequences": len(prompts),
            "new_tokens": n,
            "wall_s": t_batch,
            "tokens_per_s": batch_tps,
        },
    ]

    def hf_static(ps):
        import torch

        width = max(map(len, ps))
        rows = [[pad] * (width - len(p)) + p for p in ps]  # left padding, as generate_ids does
        ids = torch.tensor(rows, device=next(model.parameters()).device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in ps]).to(ids.device),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            pad_token_id=pad,
            cache_implementation="static",
        )
        assert out.shape[1] == ids.shape[1] + n

    if args.static and torch.cuda.is_available():
        torch._logging.set_logs(perf_hints=True)  # prints why a CUDA graph was skipped, if one is

        def prefill():
            with torch.no_grad():
                model(input_ids=torch.tensor(prompts, device="cuda"), logits_to_keep=1)

        prefill()
        result["prefill_s"] = timed(prefill)
        print(f"prefill alone (batch {len(prompts)}): {result['prefill_s']:.2f} s", flush=True)
    timed_static = []
    if args.static:  # the product's path (LocalClient static_cache, blocks.llm.decode_static)
        timed_static.append(("static (ours)", lambda: gen(prompts, static_rows=len(prompts))))
    if args.hf_static:
        timed_static.append(("static (transformers)", lambda: hf_static(prompts)))
    for label, fn in timed_static:
        warm = timed(fn)  # the first call compiles for this batch shape
        t_static = min(timed(fn), timed(fn))
        from torch._dynamo.utils import counters

        graphs = dict(counters["stats"]) | {k: v for k, v in counters["inductor"].items() if "cudagraph" in k}
        print(
            f"{label}: {len(prompts) * n / t_static:.1f} tokens/s (first call {warm:.1f} s) {graphs}",
            flush=True,
        )
        rows.append(
            {
                "mode": f"batch {len(prompts)} {label}",
                "sequences": len(prompts),
                "new_tokens": n,
                "wall_s": t_static,
                "tokens_per_s": len(prompts) * n / t_static,
                "compile_s": warm - t_static,
            }
        )
    if args.static and args.profile:
        print(profile_static(lambda: gen(prompts, static_rows=len(prompts))), flush=True)
    result |= {
        "model": "glm4-9b-shaped" if args.glm4 else "smollm2-135m",
        "rows": rows,
        "speedup": batch_tps / one_tps,
    }
    print(
        f"model: {result['model']} on {result['device']} ({result['threads']} threads), {n} new tokens per sequence"
    )
    print(f"{'mode':>32} {'seqs':>5} {'wall s':>8} {'tokens/s':>9}")
    for r in rows:
        print(f"{r['mode']:>32} {r['sequences']:>5} {r['wall_s']:>8.2f} {r['tokens_per_s']:>9.1f}")
    print(f"speedup: {result['speedup']:.1f}x")
    out = (
        ROOT
        / "benchmarks"
        / "_out"
        / ("generate_throughput_glm4.json" if args.glm4 else "generate_throughput.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
