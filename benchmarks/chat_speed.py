"""Chat speed: plain PEFT generate (baseline) vs blocks.chat streaming vs the merged LoRA export.

    python benchmarks/chat_speed.py [--model BASE] [--tokens 64] [--repeats 3] [--random-1b]
Prints a table and writes benchmarks/_out/chat_speed.json. Same model, same prompt, same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from blocks.chat import GenParams, build_messages, generate_reply, load_model  # noqa: E402
from blocks.export import export_model  # noqa: E402
from blocks.models import default_model_path, model_fingerprint  # noqa: E402

PROMPT = "Write a long story about a university library, with many details."


def build_random_1b(folder: Path) -> Path:
    """A 1B-parameter random Llama (GPU runs, where no real model is on disk)."""
    import torch
    from tiny import build_tiny_tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=2048, intermediate_size=5504, num_hidden_layers=20,
                      num_attention_heads=16, num_key_value_heads=16, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id)  # fmt: skip
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_lora(base: Path, out: Path) -> Path:
    """An r=16 LoRA on all linear layers (values do not matter for speed), saved like the trainer does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=16, target_modules="all-linear")
    )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    info = {"method": "lora", "base_model": str(base), "base_fingerprint": model_fingerprint(base)}
    (out / "umtcds_adapter.json").write_text(json.dumps(info))
    return out


def tokens_per_s(fn, repeats: int) -> tuple[float, int]:
    """Best-of-`repeats` tokens/s of fn() -> tokens generated (one warm-up call first)."""
    fn()
    best, n = 0.0, 0
    for _ in range(repeats):
        t = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - t))
    return best, n


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=default_model_path())
    parser.add_argument("--random-1b", action="store_true")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "_out" / "chat_speed.json"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    base = build_random_1b(tmp / "base") if args.random_1b else Path(args.model)
    adapter = make_lora(base, tmp / "adapter")
    loaded = load_model(adapter_dir=adapter)
    tok, model = loaded.tokenizer, loaded.model
    messages = build_messages([], PROMPT)
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(loaded.device)
    n_tok = args.tokens
    fixed = dict(max_new_tokens=n_tok, min_new_tokens=n_tok, do_sample=False, pad_token_id=tok.pad_token_id)

    def plain(m):
        def run():
            with torch.inference_mode():
                out = m.generate(**inputs, **fixed)
            return out.shape[1] - inputs["input_ids"].shape[1]

        return run

    def ours():
        # Greedy, no repetition penalty: the same decoding as the baseline.
        params = GenParams(temperature=0, max_new_tokens=n_tok, repetition_penalty=1.0)
        return generate_reply(loaded, messages, params).completion_tokens

    rows = [("PEFT model.generate (baseline)", *tokens_per_s(plain(model), args.repeats))]
    rows.append(("blocks.chat stream (thread + streamer + Stop)", *tokens_per_s(ours, args.repeats)))
    merged_dir = export_model(adapter, tmp / "merged").path
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=model.dtype).to(loaded.device).eval()
    rows.append(("merged export, plain generate", *tokens_per_s(plain(merged), args.repeats)))
    device = torch.cuda.get_device_name() if loaded.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"model {base.name if not args.random_1b else 'random Llama 1B'} on {device}, {loaded.dtype}")
    print(f"{'path':48} {'tokens':>6} {'tokens/s':>9}")
    for name, tps, n in rows:
        print(f"{name:48} {n:6d} {tps:9.1f}")
    result = {"device": device, "dtype": loaded.dtype, "model": str(base), "rows": [
        {"path": name, "tokens": n, "tokens_per_s": round(tps, 2)} for name, tps, n in rows]}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
