"""Config stage: typed YAML, every validation rule, presets, derived dimensions, memory estimate, CLI."""

from __future__ import annotations

import dataclasses
import json

import pytest

from blocks import config as C

GLM4_9B = {  # glm-4-9b-chat-hf's config.json (the numbers that matter)
    "model_type": "glm",
    "vocab_size": 151552,
    "hidden_size": 4096,
    "intermediate_size": 13696,
    "num_hidden_layers": 40,
    "num_attention_heads": 32,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "max_position_embeddings": 131072,
}


def valid(**changes) -> C.TrainConfig:
    cfg = C.TrainConfig(dataset_dir="data/demo/dataset")
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def write_yaml(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- loading: unknown keys, wrong types


def test_save_then_load_round_trips_and_leaves_no_temp_file(tmp_path):
    cfg = valid(method="ptuning", learning_rate=1e-3)
    cfg.ptuning.num_virtual_tokens = 64
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    path = C.save_config(cfg, tmp_path / "a.yaml")
    assert C.load_config(path) == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["a.yaml"]


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("dataset_dir: d\nlora_rank: 8\n", r"Unknown key\(s\) lora_rank: remove them or fix the spelling"),
        ("dataset_dir: d\nlora: {rank: 8, alpah: 16}\n", r"lora\.alpah.*Allowed under lora: rank, alpha"),
        ("dataset_dir: d\nbatch_size: four\n", r"batch_size: expected a whole number, got 'four'"),
        ("dataset_dir: d\nlearning_rate: fast\n", r"learning_rate: expected a number"),
        (
            "dataset_dir: d\nptuning: {prefix_projection: 'yes'}\n",
            r"ptuning\.prefix_projection: expected true or false",
        ),
        ("dataset_dir: d\nlora: {target_modules: q_proj}\n", r"lora\.target_modules: expected a list"),
        ("dataset_dir: d\nlora: 8\n", r"lora: expected a mapping"),
        ("dataset_dir: 5\n", r"dataset_dir: expected text"),
        ("- a\n- b\n", r"must be a mapping"),
        ("dataset_dir: [unclosed\n", r"not valid YAML"),
    ],
)
def test_load_rejects_unknown_keys_and_wrong_types_naming_the_key(tmp_path, yaml_text, message):
    with pytest.raises(C.ConfigError, match=message):
        C.load_config(write_yaml(tmp_path / "bad.yaml", yaml_text))


def test_load_accepts_ints_for_floats_and_rejects_impossible_values(tmp_path):
    cfg = C.load_config(write_yaml(tmp_path / "ok.yaml", "dataset_dir: d\nwarmup_ratio: 0\nnum_epochs: 2\n"))
    assert cfg.num_epochs == 2.0 and isinstance(cfg.num_epochs, float)
    with pytest.raises(C.ConfigError, match="batch_size must be at least 1"):
        C.load_config(write_yaml(tmp_path / "b.yaml", "dataset_dir: d\nbatch_size: 0\n"))


def test_missing_config_file_says_how_to_make_one(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist: create one in the Config tab"):
        C.load_config(tmp_path / "nope.yaml")


# ---------------------------------------------------------------- every validation rule


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"method": "adapter"}, "method 'adapter' is not one of lora, qlora, ptuning"),
        ({"base_model": " "}, "base_model is empty"),
        ({"dataset_dir": ""}, "dataset_dir is empty"),
        ({"learning_rate": 0.0}, "learning_rate must be between 0 and 1"),
        ({"learning_rate": 5.0}, "learning_rate must be between 0 and 1"),
        ({"num_epochs": 0.0, "max_steps": -1}, "Set num_epochs > 0 or max_steps > 0"),
        ({"max_steps": 0}, "max_steps must be -1"),
        ({"batch_size": 0}, "batch_size must be at least 1"),
        ({"grad_accum": 0}, "grad_accum must be at least 1"),
        ({"max_input_length": 4}, "max_input_length must be at least 8"),
        ({"max_output_length": 0}, "max_output_length must be at least 8"),
        ({"warmup_ratio": 1.5}, "warmup_ratio must be in [0, 1)"),
        ({"lr_scheduler": "warn"}, "lr_scheduler 'warn' is not one of"),
        ({"logging_steps": 0}, "logging_steps must be at least 1"),
        ({"eval_steps": 0}, "eval_steps must be at least 1"),
        ({"save_steps": 0}, "save_steps must be at least 1"),
        ({"save_total_limit": 0}, "save_total_limit must be at least 1"),
        ({"precision": "int8"}, "precision 'int8' is not one of"),
        ({"gradient_checkpointing": "yes"}, "gradient_checkpointing 'yes' is not one of"),
        ({"lora": C.LoraParams(rank=0)}, "lora.rank must be at least 1"),
        ({"lora": C.LoraParams(alpha=0)}, "lora.alpha must be at least 1"),
        ({"lora": C.LoraParams(dropout=1.0)}, "lora.dropout must be in [0, 1)"),
        (
            {"method": "ptuning", "ptuning": C.PtuningParams(num_virtual_tokens=0)},
            "num_virtual_tokens must be",
        ),
        (
            {
                "method": "ptuning",
                "ptuning": C.PtuningParams(prefix_projection=True, projection_hidden_size=0),
            },
            "projection_hidden_size must be at least 1",
        ),
        ({"checkpoint_layers": -2}, "checkpoint_layers must be -1 (all layers)"),
        ({"torch_compile": "yes"}, "torch_compile 'yes' is not one of"),
        ({"method": "qlora", "torch_compile": "on"}, "torch_compile 'on' does not work with QLoRA"),
    ],
)
def test_each_field_rule_explains_what_to_change(changes, message):
    problems = C.check_fields(valid(**changes))
    assert any(message in p for p in problems), problems


def test_a_valid_config_has_no_problems_and_auto_switches_resolve_per_machine():
    assert C.check_fields(valid()) == []
    assert C.resolve_switches(valid(), cuda=False, bf16_supported=False) == {
        "precision": "fp32",
        "gradient_checkpointing": False,
        "torch_compile": False,
    }
    assert C.resolve_switches(valid(), cuda=True, bf16_supported=True) == {
        "precision": "bf16",
        "gradient_checkpointing": True,
        "torch_compile": True,
    }
    qlora = valid(method="qlora")
    assert not C.resolve_switches(qlora, cuda=True, bf16_supported=True)["torch_compile"]
    assert not C.resolve_switches(valid(torch_compile="off"), cuda=True, bf16_supported=True)["torch_compile"]
    assert C.resolve_switches(valid(), cuda=True, bf16_supported=False)["precision"] == "fp16"
    # P-tuning keeps its prefix under checkpointing, so "auto" checkpoints it on a GPU too
    assert C.check_fields(valid(method="ptuning", gradient_checkpointing="on")) == []
    assert C.resolve_switches(valid(torch_compile="on"), cuda=True, bf16_supported=True)["torch_compile"]
    assert C.resolve_switches(valid(method="ptuning"), cuda=True, bf16_supported=True)[
        "gradient_checkpointing"
    ]
    assert not C.resolve_switches(valid(gradient_checkpointing="off"), cuda=True, bf16_supported=True)[
        "gradient_checkpointing"
    ]


@pytest.mark.parametrize(
    "changes, cuda, bnb, message",
    [
        (
            {"method": "qlora"},
            False,
            True,
            "QLoRA loads the model in 4 bits, which needs an NVIDIA GPU (CUDA)",
        ),
        ({"method": "qlora"}, True, False, "QLoRA needs the bitsandbytes package"),
        ({"precision": "bf16"}, False, True, "precision bf16 needs a GPU"),
        ({"precision": "fp16"}, False, True, "precision fp16 needs a GPU"),
        (
            {"max_input_length": 100000, "max_output_length": 40000},
            True,
            True,
            "exceeds the model's max_position",
        ),
    ],
)
def test_machine_and_model_rules(changes, cuda, bnb, message):
    problems = C.check_environment(valid(**changes), GLM4_9B, cuda=cuda, has_bitsandbytes=bnb)
    assert any(message in p for p in problems), problems
    assert C.check_environment(valid(), GLM4_9B, cuda=cuda, has_bitsandbytes=bnb) == []


def test_validate_config_checks_model_dataset_and_adapter_folders(tmp_path, tiny_model_dir):
    cfg = valid(
        base_model=str(tmp_path / "no-model"), dataset_dir=str(tmp_path / "ds"), init_adapter=str(tmp_path)
    )
    problems = C.validate_config(cfg, gpu=None)
    assert any("no config.json" in p and "python -m blocks.models" in p for p in problems)
    assert any("train.jsonl is missing: build the dataset first" in p for p in problems)
    assert any("init_adapter" in p and "adapter_config.json" in p for p in problems)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "train.jsonl").write_text("{}\n")
    assert (
        C.validate_config(
            valid(
                base_model=str(tiny_model_dir),
                dataset_dir=str(tmp_path / "ds"),
                max_input_length=256,
                max_output_length=256,
            ),
            gpu=None,
        )
        == []
    )


# ---------------------------------------------------------------- presets and named configs


@pytest.mark.parametrize("name", C.PRESETS)
def test_presets_load_and_pass_validation(name, workspace):
    cfg = C.load_preset(name, project="demo")
    assert cfg.dataset_dir == str(workspace / "demo" / "dataset")
    assert C.check_fields(cfg) == []
    if name == "cpu-demo":
        # On this very machine (no GPU) with the embedded model: only the dataset is missing.
        assert cfg.base_model == "models/smollm2-135m-instruct"
        assert (
            C.check_environment(cfg, C.read_model_config(cfg.base_model), cuda=False, has_bitsandbytes=False)
            == []
        )
        assert 0 < cfg.max_steps <= 100
    else:
        assert C.check_environment(cfg, GLM4_9B, cuda=True, has_bitsandbytes=True) == []
        card = 24 if name == "gpu-24gb" else 80
        assert C.estimate_memory(cfg, GLM4_9B).total < card * 0.93  # fits the card it is named after


def test_unknown_preset_lists_the_choices():
    with pytest.raises(C.ConfigError, match="choose one of cpu-demo, gpu-24gb, gpu-80gb"):
        C.load_preset("gpu-12gb")


def test_named_configs_save_list_and_refuse_bad_names(tmp_path):
    from blocks.workspace import WorkspaceError

    path = C.save_named_config(valid(), "my-lora", tmp_path)
    assert path == tmp_path / "my-lora.yaml" and C.list_configs(tmp_path) == ["my-lora"]
    assert C.load_config(path) == valid()
    with pytest.raises(WorkspaceError, match="Invalid config name"):
        C.save_named_config(valid(), "../evil", tmp_path)
    with pytest.raises(C.ConfigError, match="batch_size must be at least 1"):
        C.save_named_config(valid(batch_size=0), "broken", tmp_path)
    assert C.list_configs(tmp_path) == ["my-lora"]


# ---------------------------------------------------------------- derived dimensions


@pytest.mark.parametrize(
    "model_type, expected",
    [
        ("llama", "gate_proj"),
        ("qwen2", "up_proj"),
        ("glm", "gate_up_proj"),
        ("glm4", "gate_up_proj"),
        ("chatglm", "query_key_value"),
    ],
)
def test_lora_targets_follow_the_architecture(model_type, expected):
    assert expected in C.target_modules(valid(), {"model_type": model_type})
    assert C.target_modules(valid(lora=C.LoraParams(target_modules=["q_proj"])), {"model_type": "glm"}) == [
        "q_proj"
    ]


def test_unknown_architecture_asks_for_target_modules():
    with pytest.raises(C.ConfigError, match="list them under lora.target_modules"):
        C.target_modules(valid(), {"model_type": "gpt_neox"})


def test_prefix_dimensions_use_key_value_heads():
    assert C.prefix_dimensions(GLM4_9B) == {
        "num_layers": 40,
        "kv_heads": 2,
        "head_dim": 128,
        "token_dim": 256,
    }


@pytest.mark.parametrize("method", ["lora", "ptuning", "ptuning-projection"])
def test_trainable_count_and_weights_match_the_real_peft_model(tiny_model_dir, method):
    """The estimate's inputs equal what PEFT actually builds on the tiny model."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune.train import load_model_and_tokenizer

    cfg = valid(base_model=str(tiny_model_dir), method=method.split("-")[0])
    cfg.ptuning.prefix_projection = method.endswith("projection")
    cfg.ptuning.projection_hidden_size = 24
    model, _ = load_model_and_tokenizer(cfg, "fp32", checkpointing=False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model_config = C.read_model_config(str(tiny_model_dir))
    assert C.count_trainable(cfg, model_config) == trainable
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    assert C.count_parameters(model_config) == sum(p.numel() for p in base.parameters())


# ---------------------------------------------------------------- memory estimate


@pytest.mark.parametrize(
    "method, changes, measured_gib",
    [
        # Peaks measured on an H100 with the GLM-4-9B shape, bf16 (shared/STACK.md).
        (
            "ptuning",
            {
                "batch_size": 4,
                "max_input_length": 129,
                "max_output_length": 512,
                "gradient_checkpointing": "off",
            },
            37.7,
        ),
        (
            "ptuning",
            {
                "batch_size": 2,
                "max_input_length": 129,
                "max_output_length": 512,
                "gradient_checkpointing": "off",
            },
            27.7,
        ),
        (
            "lora",
            {
                "batch_size": 4,
                "max_input_length": 512,
                "max_output_length": 512,
                "gradient_checkpointing": "on",
            },
            25.9,
        ),
        (
            "lora",
            {
                "batch_size": 4,
                "max_input_length": 512,
                "max_output_length": 512,
                "gradient_checkpointing": "off",
            },
            54.4,
        ),
        (
            "lora",
            {
                "batch_size": 1,
                "max_input_length": 513,
                "max_output_length": 512,
                "gradient_checkpointing": "on",
            },
            19.7,
        ),
    ],
)
def test_memory_estimate_is_within_15_percent_of_measured_peaks(method, changes, measured_gib):
    """Against the seed-era stock loss (fp32 logits for every token)."""
    cfg = valid(method=method, precision="bf16", **changes)
    cfg.ptuning.num_virtual_tokens = 512
    cfg.lora.target_modules = ["q_proj", "k_proj", "v_proj"]
    # Those runs used the stock loss (fp32 logits for every token), hence full_logits=True.
    est = C.estimate_memory(cfg, GLM4_9B, full_logits=True)
    assert abs(est.total - measured_gib) / measured_gib < 0.15, (est, measured_gib)


@pytest.mark.parametrize(
    "method, changes, measured_gib",
    [
        # The project trainer's own peaks (nvidia-smi, the trainer process), H200, GLM-4-9B shape,
        # LoRA r8 on all linear layers, dropout 0, compiled layers: benchmarks/RESULTS.md, 4th session
        ("lora", {"batch_size": 4, "gradient_checkpointing": "on"}, 21.1),
        ("lora", {"batch_size": 4, "gradient_checkpointing": "off"}, 40.8),
        ("lora", {"batch_size": 6, "gradient_checkpointing": "off"}, 51.8),
        ("ptuning", {"batch_size": 4, "max_input_length": 128, "gradient_checkpointing": "on"}, 20.0),
        ("qlora", {"batch_size": 4, "gradient_checkpointing": "on"}, 9.9),
        # third session, H100, LoRA dropout 0.05 (each adapter keeps its dropped-out input), whole card
        ("lora", {"batch_size": 4, "gradient_checkpointing": "off", "dropout": 0.05}, 50.6),
    ],
)
def test_memory_estimate_is_within_10_percent_of_the_trainers_measured_peaks(method, changes, measured_gib):
    cfg = valid(method=method, precision="bf16", max_input_length=512, max_output_length=512)
    changes = dict(changes)
    cfg.lora.dropout = changes.pop("dropout", 0.0)
    for key, value in changes.items():
        setattr(cfg, key, value)
    cfg.ptuning.num_virtual_tokens = 512
    est = C.estimate_memory(cfg, GLM4_9B)
    assert abs(est.total - measured_gib) / measured_gib < 0.10, (est, measured_gib)


def test_the_trainers_label_only_chunked_loss_shrinks_the_logits_term():
    """GLM-4's 151,552-token vocabulary: 4 x 1024 tokens of fp32 logits are 4.6 GiB with their gradient."""
    cfg = valid(batch_size=4, max_input_length=512, max_output_length=512, precision="bf16")
    full = C.estimate_memory(cfg, GLM4_9B, full_logits=True)
    ours = C.estimate_memory(cfg, GLM4_9B)
    assert full.logits == 4.62 and ours.logits < 0.3 * full.logits, (ours.logits, full.logits)
    assert ours.total < full.total and ours.weights == full.weights
    # GLM's head is applied chunk by chunk inside the loss: the term no longer grows with the batch
    longer = C.estimate_memory(valid(batch_size=8, max_output_length=1024, precision="bf16"), GLM4_9B)
    assert longer.logits == ours.logits
    # remote-code ChatGLM computes the answer logits itself: every one is kept once
    other = C.estimate_memory(cfg, {**GLM4_9B, "model_type": "chatglm"})
    assert other.logits > 2 * ours.logits
    assert (
        C.estimate_memory(
            valid(batch_size=8, max_output_length=1024, precision="bf16"),
            {**GLM4_9B, "model_type": "chatglm"},
        ).logits
        > other.logits
    )  # grows with the answer tokens
    assert C.estimate_memory(
        valid(batch_size=4, max_input_length=2048, precision="bf16"), GLM4_9B
    ).logits == (ours.logits)


def test_checkpointing_fewer_layers_costs_memory_in_between():
    """checkpoint_layers N: N layers keep only their input, the others all their activations."""
    base = {"batch_size": 4, "max_input_length": 512, "max_output_length": 512, "precision": "bf16"}
    every = C.estimate_memory(valid(gradient_checkpointing="on", **base), GLM4_9B)
    most = C.estimate_memory(valid(gradient_checkpointing="on", checkpoint_layers=36, **base), GLM4_9B)
    none = C.estimate_memory(valid(gradient_checkpointing="off", **base), GLM4_9B)
    assert every.activations < most.activations < none.activations
    # checkpoint_layers means nothing while checkpointing is off
    assert (
        C.estimate_memory(valid(gradient_checkpointing="off", checkpoint_layers=36, **base), GLM4_9B) == none
    )


def test_estimate_grows_with_batch_and_warns_above_the_card():
    small = C.estimate_memory(valid(batch_size=1), GLM4_9B)
    big = C.estimate_memory(valid(batch_size=8, gradient_checkpointing="off"), GLM4_9B)
    assert big.total > small.total
    qlora = C.estimate_memory(valid(method="qlora", batch_size=1), GLM4_9B)
    # 4-bit decoder layers; GLM-4's embeddings and output layer (1.24B parameters) stay bf16
    assert 0.3 * small.weights < qlora.weights < 0.4 * small.weights
    card = {"name": "RTX 4090", "total_gib": 24.0, "bf16": True}
    assert "WARNING: more than RTX 4090 has" in C.format_estimate(big, card)
    assert "QLoRA" in C.format_estimate(big, card)
    assert "Fits RTX 4090" in C.format_estimate(qlora, card)
    assert "No GPU detected" in C.format_estimate(small, None)


# ---------------------------------------------------------------- CLI


def test_cli_new_check_show(tmp_path, workspace, monkeypatch, capsys, tiny_model_dir):
    import blocks.workspace as ws

    monkeypatch.setattr(ws, "CONFIGS_DIR", tmp_path / "configs")
    assert (
        C.main(
            ["new", "cpu-demo", "--project", "demo", "--name", "mine", "--base-model", str(tiny_model_dir)]
        )
        == 0
    )
    path = tmp_path / "configs" / "mine.yaml"
    assert path.is_file()
    assert C.main(["check", str(path)]) == 1  # the project has no dataset yet
    out = capsys.readouterr().out
    assert "Estimated peak memory" in out and "build the dataset first" in out
    (workspace / "demo" / "dataset").mkdir(parents=True)
    (workspace / "demo" / "dataset" / "train.jsonl").write_text("{}\n")
    assert C.main(["check", str(path)]) == 0 and "config OK" in capsys.readouterr().out
    assert C.main(["show", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["method"] == "lora"
    write_yaml(tmp_path / "bad.yaml", "dataset_dir: d\nlora_rank: 8\n")
    assert C.main(["check", str(tmp_path / "bad.yaml")]) == 2
    assert "lora_rank" in capsys.readouterr().err


def test_config_dataclass_has_only_plain_yaml_types():
    """Every field must round-trip through YAML: no Optional/Union fields (empty string / -1 mean unset)."""
    names = {f.name for f in dataclasses.fields(C.TrainConfig)}
    assert {
        "base_model",
        "dataset_dir",
        "method",
        "lora",
        "ptuning",
        "precision",
        "gradient_checkpointing",
    } <= names


# ---------------------------------------------------------------- the tab's form <-> config


def test_config_tab_builds_and_its_form_round_trips_a_config():
    import gradio as gr

    import ui_config
    from ui_common import Bilingual, UIContext

    cfg = C.load_preset("gpu-24gb")
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    cfg.dataset_dir = "data/demo/dataset"
    assert ui_config.values_to_config(ui_config.config_to_values(cfg)) == cfg
    values = ui_config.config_to_values(cfg)
    values[[f for f, _ in ui_config.FIELDS].index("batch_size")] = None
    with pytest.raises(C.ConfigError, match="batch_size is empty: enter a number"):
        ui_config.values_to_config(values)

    with gr.Blocks() as demo:
        L = Bilingual("zh")
        ctx = UIContext(
            L=L, project=gr.Dropdown(["demo"], value="demo"), lang=gr.State("zh"), default_model="m"
        )
        ui_config.build_tab(ctx)
    labels = {getattr(b, "label", None) for b in demo.blocks.values()}
    assert {"预设", "梯度检查点", "基座模型目录"} <= labels


def test_config_tab_refuses_paths_outside_the_workspace():
    import ui_config
    from blocks.workspace import WorkspaceError

    with pytest.raises(WorkspaceError, match="outside the workspace"):
        ui_config.confine_config_paths(valid(base_model="/etc"))


def test_loss_chunks_hold_about_the_same_number_of_logits_whatever_the_vocabulary():
    from blocks.config import loss_chunk_rows

    assert loss_chunk_rows(151552) == 128  # GLM-4: 19.4M logits a chunk, not 256 rows' 38.8M
    assert loss_chunk_rows(49152) == 320  # SmolLM2
    assert loss_chunk_rows(1024) == 16384  # tiny vocabularies: big chunks
    assert loss_chunk_rows(10**7) == 64  # never below one 64-row tile


def test_advice_says_when_ptuning_suits_not_this_model_and_when_epochs_are_ignored(tmp_path, tiny_model_dir):
    import ui_config

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "train.jsonl").write_text("{}\n" * 40)
    cfg = C.load_preset("cpu-demo")
    cfg.base_model, cfg.dataset_dir = str(tiny_model_dir), str(dataset)
    model_config = C.read_model_config(cfg.base_model)
    advice = dict(C.config_advice(cfg, model_config))
    assert "ptuning_small_model" not in advice  # LoRA: nothing to say about P-tuning
    steps = C.advice_text("max_steps_override", advice["max_steps_override"])
    assert f"Max steps is {cfg.max_steps}" in steps and "Epochs (3.0) is ignored" in steps
    assert f"about {cfg.max_steps * cfg.batch_size / 40} passes" in steps
    cfg.method, cfg.max_steps = "ptuning", -1
    advice = C.config_advice(cfg, model_config)
    assert [code for code, _ in advice] == ["ptuning_small_model"]
    assert "Choose LoRA" in C.advice_text(*advice[0])
    report = ui_config.describe_config(cfg, "zh")
    assert "### 建议" in report and "请选 LoRA" in report and "Choose LoRA" not in report
