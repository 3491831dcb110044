"""Tiny real models for unit tests: a Llama built from a config and a BPE tokenizer trained in memory.

They load, train and generate like any Hugging Face model, in well under a second.
"""

from __future__ import annotations

import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The library opens at 8:00 and closes at 22:00. Call 027-8765-4321.",
    "Eastlake University was founded in 1952. The registrar's office is in Building A.",
    "Question: When does the library open? Answer: It opens at 8:00 every day.",
    "图书馆开放时间为早上八点至晚上十点。东湖大学成立于一九五二年。",
    "学生宿舍位于校园东区，每学年住宿费为一千二百元。奖学金申请截止日期为十月三十一日。",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,:;!?()-/'\"",
]


def build_tiny_tokenizer():
    """A byte-level BPE tokenizer with ChatML special tokens (handles any text, Chinese included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_input_names=["input_ids", "attention_mask"],
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def build_tiny_model(folder: Path, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Save a 2-layer, 32-wide Llama with the tiny tokenizer to `folder` and return it.

    A wide `initializer_range` (e.g. 0.3) makes outputs depend strongly on attention, so a learned
    prefix can steer the model (the default init leaves its outputs near uniform).
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# One QA pair the chat, serve and export tests train a tiny adapter on.
QUESTION = "When does the library open?"
ANSWER = "It opens at 8:00 every day."


def train_tiny_adapter(
    base: Path, out: Path, method: str = "lora", steps: int = 30, run_id: str = "run-1"
) -> Path:
    """Train a LoRA or prefix-tuning adapter on one QA pair and save it like the trainer does."""
    import torch
    from peft import LoraConfig, PrefixTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from blocks.models import model_fingerprint

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    if method == "ptuning":
        config = PrefixTuningConfig(num_virtual_tokens=8, task_type="CAUSAL_LM")
    else:
        config = LoraConfig(r=8, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(model, config)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(prompt + ANSWER + "<|im_end|>\n", return_tensors="pt").input_ids
    labels = ids.clone()
    labels[:, : len(tokenizer(prompt).input_ids)] = -100
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "method": method,
        "base_model": str(base),
        "base_fingerprint": model_fingerprint(base),
        "run_id": run_id,
        "created_at": "2026-11-28T00:00:00Z",
    }
    (out / "umtcds_adapter.json").write_text(json.dumps(info), encoding="utf-8")
    return out
