"""Export: merged LoRA answers like base + adapter; P-tuning v2 is packaged with its base reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny import QUESTION, train_tiny_adapter

from blocks import export
from blocks.chat import GenParams, build_messages, generate_reply, load_model
from blocks.export import ExportError, export_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = [QUESTION, "Where is the registrar's office?", "图书馆几点开门？"]


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    run = tmp_path_factory.mktemp("project") / "runs" / "run-1"
    lora = train_tiny_adapter(tiny_model_dir, run / "adapter")
    ptuning = train_tiny_adapter(
        tiny_model_dir, run.parent / "run-2" / "checkpoint-30", "ptuning", run_id="run-2"
    )
    # A trainer checkpoint also holds optimizer and RNG state that an export must leave behind.
    (ptuning / "optimizer.pt").write_bytes(b"\0" * 64)
    (ptuning / "rng_state.pth").write_bytes(b"\0" * 16)
    (ptuning / "trainer_state.json").write_text("{}")
    return {"lora": lora, "ptuning": ptuning}


def greedy_answers(model, tokenizer) -> list[str]:
    """Plain-transformers greedy answers to PROMPTS through the folder's own chat template."""
    answers = []
    for prompt in PROMPTS:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def test_merged_lora_answers_like_the_adapter(adapters, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = export_model(adapters["lora"], tmp_path / "merged")
    assert result.kind == "merged" and "standalone" in result.message
    files = {p.name for p in result.path.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "umtcds_export.json"} <= files
    assert not any(name.endswith((".bin", ".pt")) or name.startswith("adapter_") for name in files)
    merged = AutoModelForCausalLM.from_pretrained(result.path)  # plain transformers, no peft
    tokenizer = AutoTokenizer.from_pretrained(result.path)
    assert tokenizer.chat_template  # the training template travels with the model

    loaded = load_model(adapter_dir=adapters["lora"])
    params = GenParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    via_adapter = [generate_reply(loaded, build_messages([], p), params).text for p in PROMPTS]
    via_base = [
        generate_reply(loaded, build_messages([], p), params, use_adapter=False).text for p in PROMPTS
    ]
    assert greedy_answers(merged, tokenizer) == via_adapter
    assert via_adapter != via_base  # the merge really carries the fine-tuning
    info = json.loads((result.path / "umtcds_export.json").read_text())
    assert info["kind"] == "merged" and info["method"] == "lora" and info["base_fingerprint"]


def test_ptuning_is_copied_with_its_base_reference(adapters, tmp_path, tiny_model_dir):
    result = export_model(adapters["ptuning"], tmp_path / "prefix")
    assert result.kind == "adapter" and "cannot be merged" in result.message
    files = {p.name for p in result.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "umtcds_adapter.json", "EXPORT.md"} <= files
    assert not files & {"optimizer.pt", "rng_state.pth", "trainer_state.json"}
    info = json.loads((result.path / "umtcds_adapter.json").read_text())
    assert info["base_model"] == str(tiny_model_dir) and info["method"] == "ptuning"
    # The exported folder is itself a loadable checkpoint that answers like the original.
    params = GenParams(temperature=0, max_new_tokens=12, repetition_penalty=1.0)
    messages = build_messages([], QUESTION)
    exported = generate_reply(load_model(adapter_dir=result.path), messages, params).text
    assert exported == generate_reply(load_model(adapter_dir=adapters["ptuning"]), messages, params).text


def test_existing_folder_is_not_clobbered(adapters, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty"):
        export_model(adapters["ptuning"], out)
    assert (out / "keep.txt").read_text() == "mine"
    assert export_model(adapters["ptuning"], out, overwrite=True).kind == "adapter"
    assert not (out / "keep.txt").exists() and not (tmp_path / "taken.partial").exists()


def test_cli_explains_results_and_errors(adapters, tmp_path, capsys):
    assert export.main(["--adapter", str(adapters["ptuning"]), "--out", str(tmp_path / "cli")]) == 0
    assert "cannot be merged" in capsys.readouterr().out
    assert export.main(["--adapter", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
