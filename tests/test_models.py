"""The embedded default model: prepared once into a plain HF folder, and a real instruct model."""

from __future__ import annotations

import pytest

from blocks import models


def test_gguf_file_is_found_without_importing_the_package():
    path = models.find_gguf_file()
    assert path.name == models.GGUF_FILE and path.stat().st_size > 50_000_000


def test_fingerprint_tells_models_apart(tiny_model_dir, embedded_model_dir):
    tiny = models.model_fingerprint(tiny_model_dir)
    assert tiny == models.model_fingerprint(tiny_model_dir)
    assert tiny != models.model_fingerprint(embedded_model_dir)
    assert tiny["hidden_size"] == 32


@pytest.mark.slow
def test_embedded_model_answers_like_an_instruct_model(embedded_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert models.is_model_ready(embedded_model_dir)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    assert tok.eos_token == "<|im_end|>"
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0][enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


@pytest.mark.slow
def test_prepare_rebuilds_a_missing_model(tmp_path):
    target = tmp_path / "smol"
    models.prepare_default_model(target)
    assert models.is_model_ready(target)
    assert not (target / "tokenizer.model").exists()
    before = (target / "model.safetensors").stat().st_mtime
    models.prepare_default_model(target)  # second call skips the work
    assert (target / "model.safetensors").stat().st_mtime == before
