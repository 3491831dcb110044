"""Config stage: one typed, validated training config (YAML), the trainer's only input.

    python -m blocks.config presets                                  # list presets
    python -m blocks.config new cpu-demo --project demo --name my-lora   # preset -> configs/my-lora.yaml
    python -m blocks.config check configs/my-lora.yaml               # validate + memory estimate
    python -m blocks.config show configs/my-lora.yaml

Dimensions that must match the model (prefix layers/heads/width, LoRA target modules) are
derived from the model's config.json, never typed. Relative paths are relative to the repository.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from blocks import workspace as ws
from blocks.models import REPO_ROOT, default_model_path

PRESETS_DIR = REPO_ROOT / "configs" / "presets"
PRESETS = ("cpu-demo", "gpu-24gb", "gpu-80gb")
METHODS = ("lora", "qlora", "ptuning")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SWITCHES = ("auto", "on", "off")
MAX_CONFIG_BYTES = 1_000_000  # a config is about 1 KB; anything near this size is not one
MAX_WHOLE_NUMBER = 2**31 - 1  # steps, lengths, sizes: far beyond any real run, within every library's int
MAX_SEED = 2**32 - 1  # numpy's limit (transformers.set_seed seeds numpy, torch and random alike)
MAX_EPOCHS = 10_000

# LoRA targets per architecture (model_type in config.json): every linear layer of attention and MLP.
LORA_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "glm": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "glm4": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"],
    "chatglm": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
}


class ConfigError(ValueError):
    """A config that cannot be trained; the message lists each problem and what to change."""


@dataclass
class LoraParams:
    """LoRA / QLoRA adapter shape."""

    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=list)  # empty: chosen per architecture


@dataclass
class PtuningParams:
    """P-tuning v2 (PEFT prefix tuning): learned key/value prefixes in every layer."""

    num_virtual_tokens: int = 32
    prefix_projection: bool = False  # reparameterise the prefix through an MLP (more params, stabler)
    projection_hidden_size: int = 512


@dataclass
class TrainConfig:
    """Everything the trainer needs; serialised to YAML."""

    base_model: str = field(default_factory=default_model_path)
    dataset_dir: str = ""  # data/<project>/dataset; filled in from the project when empty
    method: str = "lora"
    lora: LoraParams = field(default_factory=LoraParams)
    ptuning: PtuningParams = field(default_factory=PtuningParams)
    init_adapter: str = ""  # start from this adapter folder's weights (fresh optimizer)
    learning_rate: float = 2e-4
    num_epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides num_epochs
    batch_size: int = 4
    grad_accum: int = 1
    max_input_length: int = 512  # tokens of the system + user turns
    max_output_length: int = 512  # tokens of the assistant turn
    warmup_ratio: float = 0.03
    lr_scheduler: str = "cosine"
    logging_steps: int = 10
    eval_steps: int = 50
    save_steps: int = 50
    save_total_limit: int = 3
    seed: int = 42
    precision: str = "auto"  # auto: bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU
    gradient_checkpointing: str = "auto"  # auto: on when training on a GPU, off on the CPU
    checkpoint_layers: int = -1  # with checkpointing: recompute the first N decoder layers only (-1: all)
    torch_compile: str = "auto"  # compile each decoder layer (auto: on a GPU, eager if compiling fails)
    group_by_length: bool = True  # batches of similar lengths: less padding, same data per epoch


@dataclass
class MemoryEstimate:
    """Rough peak GPU memory of one training step, in GiB, by part."""

    weights: float
    trainable: float  # adapter weights + gradients + AdamW states (fp32)
    activations: float
    logits: float
    overhead: float  # CUDA context and allocator slack

    @property
    def total(self) -> float:
        return self.weights + self.trainable + self.activations + self.logits + self.overhead


# ---------------------------------------------------------------- pure core: dict <-> dataclass


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _shown(value) -> str:
    """A value for an error message, cut short (a huge or deeply shared value is never expanded)."""
    return reprlib.repr(value)


def _convert(value, tp, key: str):
    """Check `value` against the annotation `tp`; return it (ints accepted for floats) or raise."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {_type_name(tp)} fields, got {_shown(value)}.")
        return from_dict(value, tp, prefix=f"{key}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {_type_name(item)}, got {_shown(value)}.")
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported annotation {tp}")  # no optional fields: "" or -1 mean "unset"
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {_shown(value)}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number (e.g. 0.0002 or 2e-4), got {_shown(value)}.")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected a whole number, got {_shown(value)}.")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {_shown(value)} (quote it in YAML).")
        return value
    raise TypeError(f"unsupported annotation {tp}")


def from_dict(data: dict, cls=TrainConfig, prefix: str = ""):
    """Build `cls` from a plain mapping; unknown keys and wrong types raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"The config must be a mapping of keys to values, got {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(
            f"Unknown key(s) {', '.join(prefix + str(k) for k in unknown)}: remove them or fix the spelling. "
            f"Allowed{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}."
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: TrainConfig) -> dict:
    """The config as plain values, in field order (what the YAML shows)."""
    return dataclasses.asdict(cfg)


def resolve_path(path: str) -> Path:
    """A config path as an absolute path: relative ones are relative to the repository."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


# ---------------------------------------------------------------- pure core: derived values and checks


def target_modules(cfg: TrainConfig, model_config: dict) -> list[str]:
    """LoRA target modules: the config's list, else the architecture's default."""
    if cfg.lora.target_modules:
        return list(cfg.lora.target_modules)
    model_type = model_config.get("model_type", "")
    if model_type not in LORA_TARGETS:
        raise ConfigError(
            f"No default LoRA target modules for model type {model_type!r}: list them under "
            f"lora.target_modules (supported by default: {', '.join(LORA_TARGETS)})."
        )
    return LORA_TARGETS[model_type]


def prefix_dimensions(model_config: dict) -> dict:
    """P-tuning v2 prefix shape, from the model: one key and one value per layer, per KV head.

    Mirrors PEFT's own derivation (grouped-query attention stores fewer KV heads than query heads).
    """
    cfg = model_config.get("text_config", model_config)
    layers = cfg.get("num_hidden_layers") or cfg.get("num_layers")
    heads = cfg.get("num_attention_heads")
    hidden = cfg.get("hidden_size")
    if not (layers and heads and hidden):
        raise ConfigError(
            "The model's config.json lacks num_hidden_layers/num_attention_heads/hidden_size: "
            "P-tuning cannot size its prefix; use LoRA for this model."
        )
    kv_heads = cfg.get("num_key_value_heads") or cfg.get("multi_query_group_num") or heads
    head_dim = cfg.get("head_dim") or cfg.get("kv_channels") or hidden // heads
    return {
        "num_layers": layers,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "token_dim": kv_heads * head_dim,
    }


def resolve_switches(cfg: TrainConfig, cuda: bool, bf16_supported: bool) -> dict:
    """What 'auto' means on this machine: precision and gradient checkpointing actually used."""
    precision = cfg.precision
    if precision == "auto":
        precision = ("bf16" if bf16_supported else "fp16") if cuda else "fp32"
    checkpointing = cfg.gradient_checkpointing == "on" or (cfg.gradient_checkpointing == "auto" and cuda)
    # measured on an H100 (benchmarks/RESULTS.md): compiled layers train faster and keep fewer
    # activations; QLoRA's 4-bit layers do not compile
    compile_layers = cfg.torch_compile == "on" or (
        cfg.torch_compile == "auto" and cuda and cfg.method != "qlora"
    )
    return {"precision": precision, "gradient_checkpointing": checkpointing, "torch_compile": compile_layers}


def number_fields(cfg: TrainConfig) -> list[tuple[str, int | float]]:
    """(dotted name, value) of every number in the config, the lora and ptuning sections included."""
    found = []
    for section, obj in (("", cfg), ("lora.", cfg.lora), ("ptuning.", cfg.ptuning)):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, int | float) and not isinstance(value, bool):
                found.append((section + f.name, value))
    return found


def check_fields(cfg: TrainConfig) -> list[str]:
    """Problems visible from the config alone (ranges, choices, impossible combinations)."""
    problems = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name, value in number_fields(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            problems.append(f"{name} is {value}: enter a finite number (not nan or inf).")
        elif isinstance(value, int) and name != "seed" and abs(value) > MAX_WHOLE_NUMBER:
            problems.append(f"{name} is {value}: enter a whole number below {MAX_WHOLE_NUMBER + 1}.")
    need(
        isinstance(cfg.seed, int) and 0 <= cfg.seed <= MAX_SEED,
        f"seed is {_shown(cfg.seed)}: enter a whole number from 0 to {MAX_SEED}.",
    )
    need(
        not math.isfinite(cfg.num_epochs) or cfg.num_epochs <= MAX_EPOCHS,
        f"num_epochs is {cfg.num_epochs}: enter at most {MAX_EPOCHS} (or set max_steps).",
    )
    need(cfg.method in METHODS, f"method {cfg.method!r} is not one of {', '.join(METHODS)}.")
    need(
        bool(cfg.base_model.strip()), "base_model is empty: enter a model folder (default: the embedded one)."
    )
    need(
        bool(cfg.dataset_dir.strip()),
        "dataset_dir is empty: choose a project or enter data/<project>/dataset.",
    )
    need(
        cfg.learning_rate > 0 and cfg.learning_rate < 1, "learning_rate must be between 0 and 1 (e.g. 2e-4)."
    )
    need(
        cfg.max_steps > 0 or cfg.num_epochs > 0,
        "Set num_epochs > 0 or max_steps > 0: otherwise nothing would be trained.",
    )
    need(
        cfg.max_steps == -1 or cfg.max_steps > 0,
        "max_steps must be -1 (use num_epochs) or a positive number.",
    )
    need(cfg.batch_size >= 1, "batch_size must be at least 1.")
    need(cfg.grad_accum >= 1, "grad_accum must be at least 1.")
    need(cfg.max_input_length >= 8, "max_input_length must be at least 8 tokens.")
    need(cfg.max_output_length >= 8, "max_output_length must be at least 8 tokens.")
    need(0 <= cfg.warmup_ratio < 1, "warmup_ratio must be in [0, 1) (e.g. 0.03).")
    need(
        cfg.lr_scheduler in SCHEDULERS,
        f"lr_scheduler {cfg.lr_scheduler!r} is not one of {', '.join(SCHEDULERS)}.",
    )
    for name in ("logging_steps", "eval_steps", "save_steps", "save_total_limit"):
        need(getattr(cfg, name) >= 1, f"{name} must be at least 1.")
    need(cfg.precision in PRECISIONS, f"precision {cfg.precision!r} is not one of {', '.join(PRECISIONS)}.")
    need(
        cfg.gradient_checkpointing in SWITCHES,
        f"gradient_checkpointing {cfg.gradient_checkpointing!r} is not one of {', '.join(SWITCHES)}.",
    )
    need(
        cfg.checkpoint_layers >= -1,
        "checkpoint_layers must be -1 (all layers) or the number of layers to checkpoint (0 or more).",
    )
    need(
        cfg.torch_compile in SWITCHES,
        f"torch_compile {cfg.torch_compile!r} is not one of {', '.join(SWITCHES)}.",
    )
    need(
        cfg.torch_compile != "on" or cfg.method != "qlora",
        "torch_compile 'on' does not work with QLoRA (its 4-bit layers do not compile): set it to 'auto'.",
    )
    if cfg.method in ("lora", "qlora"):
        need(cfg.lora.rank >= 1, "lora.rank must be at least 1 (typical: 8-64).")
        need(cfg.lora.alpha >= 1, "lora.alpha must be at least 1 (typical: 2 x rank).")
        need(0 <= cfg.lora.dropout < 1, "lora.dropout must be in [0, 1).")
    if cfg.method == "ptuning":
        need(cfg.ptuning.num_virtual_tokens >= 1, "ptuning.num_virtual_tokens must be at least 1.")
        need(
            not cfg.ptuning.prefix_projection or cfg.ptuning.projection_hidden_size >= 1,
            "ptuning.projection_hidden_size must be at least 1.",
        )
    return problems


def check_environment(
    cfg: TrainConfig, model_config: dict | None, cuda: bool, has_bitsandbytes: bool
) -> list[str]:
    """Problems that depend on the model and the machine (pure: the facts are passed in)."""
    problems = []
    if cfg.method == "qlora" and not cuda:
        problems.append(
            "QLoRA loads the model in 4 bits, which needs an NVIDIA GPU (CUDA): none was found. "
            "Choose method lora on this machine."
        )
    elif cfg.method == "qlora" and not has_bitsandbytes:
        problems.append("QLoRA needs the bitsandbytes package: `pip install bitsandbytes`, or choose lora.")
    if cfg.precision == "bf16" and not cuda:
        problems.append(
            "precision bf16 needs a GPU here (CPU training is fp32): set precision to auto or fp32."
        )
    if cfg.precision == "fp16" and not cuda:
        problems.append("precision fp16 needs a GPU: set precision to auto or fp32.")
    if model_config is not None:
        try:
            if cfg.method in ("lora", "qlora"):
                target_modules(cfg, model_config)
            else:
                prefix_dimensions(model_config)
        except ConfigError as exc:
            problems.append(str(exc))
        limit = model_config.get("max_position_embeddings")
        extra = cfg.ptuning.num_virtual_tokens if cfg.method == "ptuning" else 0
        if limit and cfg.max_input_length + cfg.max_output_length + extra > limit:
            problems.append(
                f"max_input_length + max_output_length{' + num_virtual_tokens' if extra else ''} = "
                f"{cfg.max_input_length + cfg.max_output_length + extra} exceeds the model's "
                f"max_position_embeddings {limit}: lower the lengths."
            )
    return problems


def count_parameters(model_config: dict) -> int:
    """Approximate parameter count of a decoder-only transformer from its config."""
    c = model_config.get("text_config", model_config)
    h, layers = c["hidden_size"], c.get("num_hidden_layers") or c.get("num_layers")
    inter = c.get("intermediate_size") or c.get("ffn_hidden_size") or 4 * h
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads") or c.get("multi_query_group_num") or heads
    vocab = c.get("vocab_size") or c.get("padded_vocab_size")
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2
    mlp = 3 * h * inter
    embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
    return layers * (attn + mlp + 2 * h) + embed + h


def linear_shapes(model_config: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer LoRA may wrap, by module name."""
    c = model_config.get("text_config", model_config)
    h = c["hidden_size"]
    heads = c["num_attention_heads"]
    head_dim = c.get("head_dim") or h // heads
    kv = c.get("num_key_value_heads") or heads
    inter = c.get("intermediate_size") or 4 * h
    return {
        "q_proj": (h, heads * head_dim),
        "k_proj": (h, kv * head_dim),
        "v_proj": (h, kv * head_dim),
        "o_proj": (heads * head_dim, h),
        "gate_proj": (h, inter),
        "up_proj": (h, inter),
        "down_proj": (inter, h),
        "gate_up_proj": (h, 2 * inter),
        "query_key_value": (h, heads * head_dim + 2 * kv * head_dim),
        "dense": (heads * head_dim, h),
        "dense_h_to_4h": (h, 2 * inter),
        "dense_4h_to_h": (inter, h),
    }


def count_trainable(cfg: TrainConfig, model_config: dict) -> int:
    """Trainable parameters of the adapter the config describes."""
    c = model_config.get("text_config", model_config)
    if cfg.method == "ptuning":
        dims = prefix_dimensions(model_config)
        width = dims["num_layers"] * 2 * dims["token_dim"]
        if not cfg.ptuning.prefix_projection:
            return cfg.ptuning.num_virtual_tokens * width
        p = cfg.ptuning.projection_hidden_size
        tok = dims["token_dim"]
        return cfg.ptuning.num_virtual_tokens * tok + tok * p + p + p * width + width
    shapes = linear_shapes(model_config)
    h = c["hidden_size"]
    per_layer = sum(cfg.lora.rank * sum(shapes.get(m, (h, h))) for m in target_modules(cfg, model_config))
    return per_layer * (c.get("num_hidden_layers") or c.get("num_layers"))


# logits per chunk of the trainer's fp32 cross-entropy (~64 MiB per fp32 copy): GLM-4's 151,552-token
# vocabulary gives 128 rows at a time, ~0.3 GiB less at the loss than 256 rows (24 GB cards are tight)
LOSS_CHUNK_ELEMENTS = 2**24


def loss_chunk_rows(vocab: int) -> int:
    """Rows of the trainer's cross-entropy computed at a time for a vocabulary of `vocab` tokens:
    about LOSS_CHUNK_ELEMENTS logits, rounded to a multiple of 64 rows (whole matrix-multiply tiles)."""
    return max(64, round(LOSS_CHUNK_ELEMENTS / max(vocab, 1) / 64) * 64)


# Architectures whose logits are exactly lm_head(final hidden states), no soft-capping or scaling after it:
# the trainer's loss applies the head itself, chunk by chunk (finetune/train.py plain_output_head).
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "glm", "glm4"})


def estimate_memory(
    cfg: TrainConfig, model_config: dict, cuda: bool = True, full_logits: bool = False
) -> MemoryEstimate:
    """Rough peak GPU memory for the model, method, batch and lengths (calibrated on GLM-4-9B, H100).

    Activations: ~(9 h + 2 i) values per token per layer kept for backward (plus each LoRA layer's
    dropped-out input when lora.dropout > 0), or one layer's worth
    plus each layer's input with gradient checkpointing. Logits: the trainer's loss computes them
    only at answer positions (taken as max_output_length per row) and one chunk at a time (bf16 and
    fp32 copies of that chunk) where it applies the output layer itself (PLAIN_HEAD_TYPES); for other
    architectures the model returns all answer logits (kept, their gradient, and the gradient's
    concatenation) before the fp32 chunks. `full_logits` is the stock HF loss instead (fp32 logits for every token,
    with their gradient), which the measured seed recipes used.
    """
    gib = 1024**3
    c = model_config.get("text_config", model_config)
    switches = resolve_switches(cfg, cuda=cuda, bf16_supported=True)
    act_bytes = 4 if switches["precision"] == "fp32" else 2
    n_params = count_parameters(model_config)
    h, layers = c["hidden_size"], c.get("num_hidden_layers") or c.get("num_layers")
    inter = c.get("intermediate_size") or c.get("ffn_hidden_size") or 4 * h
    vocab = c.get("vocab_size") or c.get("padded_vocab_size")
    weight_bytes = n_params * act_bytes
    if cfg.method == "qlora":  # 4-bit decoder layers (nf4 + double-quant constants); embeddings stay bf16
        embed = vocab * h * (1 if c.get("tie_word_embeddings") else 2)
        weight_bytes = (n_params - embed) * 0.55 + embed * act_bytes
    tokens = cfg.batch_size * (cfg.max_input_length + cfg.max_output_length)
    per_token_layer = (9 * h + 2 * inter) * act_bytes
    if cfg.method in ("lora", "qlora") and cfg.lora.dropout > 0:
        # each wrapped layer also keeps its dropped-out input for the adapter's backward
        # (GLM-4-9B, all linear layers, 4 x 1024 tokens without checkpointing: ~9 GiB, measured)
        shapes = linear_shapes(model_config)
        per_token_layer += (
            sum(shapes.get(m, (h, h))[0] for m in target_modules(cfg, model_config)) * act_bytes
        )
    checkpointed = 0
    if switches["gradient_checkpointing"]:
        checkpointed = layers if cfg.checkpoint_layers < 0 else min(cfg.checkpoint_layers, layers)
    kept = layers - checkpointed  # layers whose activations stay for backward
    activations = tokens * (checkpointed * h * act_bytes + max(kept, 1) * per_token_layer)
    if cfg.method == "ptuning":
        dims = prefix_dimensions(model_config)
        activations += (
            cfg.batch_size * cfg.ptuning.num_virtual_tokens * layers * 2 * dims["token_dim"] * act_bytes
        )
    if full_logits:
        logits = tokens * vocab * 4 * 2
    else:
        answer_tokens = cfg.batch_size * cfg.max_output_length
        rows = min(loss_chunk_rows(vocab), answer_tokens)
        if c.get("model_type", model_config.get("model_type")) in PLAIN_HEAD_TYPES:
            logits = rows * vocab * (act_bytes * 2 + 4 * 3)  # one chunk's logits at a time, no full copy
        else:
            logits = answer_tokens * vocab * act_bytes * 3 + rows * vocab * 4 * 3
    return MemoryEstimate(
        weights=round(weight_bytes / gib, 2),
        trainable=round(count_trainable(cfg, model_config) * 16 / gib, 2),
        activations=round(activations / gib, 2),
        logits=round(logits / gib, 2),
        overhead=1.0 if cuda else 0.0,  # CUDA context, cuBLAS workspaces, allocator slack (nvidia-smi)
    )


# ---------------------------------------------------------------- I/O


def parse_yaml(text: str):
    """Plain YAML data; anchors and aliases are refused before any object is built.

    An alias repeats a value without copying it, so a few hundred bytes can stand for billions of
    items (a "billion laughs"): checking or printing them would take minutes and gigabytes.
    """
    import yaml

    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
                line = event.start_mark.line + 1
                raise ConfigError(
                    f"line {line} uses a YAML anchor or alias (&name / *name), which configs do not allow: "
                    "write the value out in full."
                )
        return yaml.safe_load(text)
    except RecursionError as exc:
        raise ConfigError("values are nested too deeply for a config: write a flat mapping of keys.") from exc


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML config; unknown keys, wrong types and impossible values raise ConfigError."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"Config file {path} does not exist: create one in the Config tab or from a preset."
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{path} is {path.stat().st_size} bytes: a training config is about 1 KB; choose a config YAML "
            "saved by the Config tab."
        )
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text: choose a config YAML saved by the Config tab.") from exc
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    try:
        cfg = from_dict(data or {})
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    problems = check_fields(cfg)
    if problems:
        raise ConfigError(f"{path}: " + " ".join(problems))
    return cfg


def save_config(cfg: TrainConfig, path: str | Path) -> Path:
    """Write `cfg` as YAML atomically (temp file + rename)."""
    import yaml

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), allow_unicode=True, sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_model_config(base_model: str) -> dict:
    """The base model's config.json as a dict."""
    folder = resolve_path(base_model)
    file = folder / "config.json"
    if not file.is_file():
        raise ConfigError(
            f"base_model {base_model}: no config.json in {folder}. Point base_model at a downloaded model "
            "folder (the embedded one is prepared by `python -m blocks.models`)."
        )
    return json.loads(file.read_text(encoding="utf-8"))


def gpu_count() -> int:
    """NVIDIA GPUs on this machine, from their device files (no torch import: pages load fast)."""
    return sum(1 for p in Path("/dev").glob("nvidia*") if p.name[len("nvidia") :].isdigit())


def detect_gpu() -> dict | None:
    """The first CUDA card: {'name', 'total_gib', 'bf16'}; None without one (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "total_gib": round(props.total_memory / 1024**3, 1),
        "bf16": torch.cuda.is_bf16_supported(),
    }


def has_bitsandbytes() -> bool:
    """True when bitsandbytes is importable (QLoRA)."""
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None


def validate_config(cfg: TrainConfig, gpu: dict | None = None, check_machine: bool = True) -> list[str]:
    """All problems: fields, the model folder, the dataset folder and (if asked) this machine."""
    problems = check_fields(cfg)
    model_config = None
    if cfg.base_model.strip():
        try:
            model_config = read_model_config(cfg.base_model)
        except ConfigError as exc:
            problems.append(str(exc))
    if cfg.dataset_dir.strip():
        train = resolve_path(cfg.dataset_dir) / "train.jsonl"
        if not train.is_file():
            problems.append(
                f"{train} is missing: build the dataset first (tab 5, or python -m blocks.dataset)."
            )
    if cfg.init_adapter and not (resolve_path(cfg.init_adapter) / "adapter_config.json").is_file():
        problems.append(
            f"init_adapter {cfg.init_adapter} has no adapter_config.json: pick a run's adapter/ folder."
        )
    if check_machine:
        problems += check_environment(
            cfg, model_config, cuda=gpu is not None, has_bitsandbytes=has_bitsandbytes()
        )
    elif model_config is not None:
        problems += check_environment(cfg, model_config, cuda=True, has_bitsandbytes=True)
    return problems


SMALL_MODEL_PARAMS = 1_000_000_000  # below this P-tuning v2 has too few layers/width to steer


def config_advice(cfg: TrainConfig, model_config: dict | None) -> list[tuple[str, dict]]:
    """Warnings that do not block training but change what the user gets, as (code, values); the
    English text is ADVICE[code] (the UI translates by code)."""
    out: list[tuple[str, dict]] = []
    if cfg.method == "ptuning" and model_config is not None:
        params = count_parameters(model_config)
        if params < SMALL_MODEL_PARAMS:
            out.append(("ptuning_small_model", {"millions": round(params / 1e6)}))
    if cfg.max_steps > 0:
        train = resolve_path(cfg.dataset_dir) / "train.jsonl" if cfg.dataset_dir.strip() else None
        records = (
            sum(1 for line in train.read_bytes().splitlines() if line.strip())
            if train is not None and train.is_file()
            else 0
        )
        per_step = max(1, cfg.batch_size * cfg.grad_accum)
        epochs = round(cfg.max_steps * per_step / records, 1) if records else None
        out.append(("max_steps_override", {"steps": cfg.max_steps, "epochs": cfg.num_epochs, "runs": epochs}))
    return out


ADVICE = {
    "ptuning_small_model": (
        "P-tuning v2 learns little on a {millions}M-parameter model: on the embedded 135M model with the "
        "CPU demo settings it ended at loss 3.88 and answered 0 of 15 reworded questions, where LoRA "
        "answered 11. Choose LoRA (or QLoRA) for small models and CPU runs; P-tuning v2 suits 6B+ models "
        "such as GLM-4 trained for hundreds of steps on a GPU."
    ),
    "max_steps_override": (
        "Max steps is {steps}, so Epochs ({epochs}) is ignored: training stops after {steps} steps"
        "{runs_text}. Set max steps to -1 to train by epochs."
    ),
    "runs_text": " (about {runs} passes over the training set)",
}


def advice_text(code: str, values: dict, templates: dict | None = None) -> str:
    """One advice line from its code and values (`templates`: a translation of ADVICE)."""
    templates = templates or ADVICE
    values = dict(values)
    values["runs_text"] = templates["runs_text"].format(**values) if values.get("runs") else ""
    return templates[code].format(**values)


def load_preset(name: str, project: str | None = None) -> TrainConfig:
    """A preset config; with `project`, its dataset_dir points at that project's dataset."""
    import yaml

    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    # Presets leave dataset_dir empty (it is per project), so they are read without the full check.
    cfg = from_dict(yaml.safe_load((PRESETS_DIR / f"{name}.yaml").read_text(encoding="utf-8")))
    if project:
        cfg.dataset_dir = str(ws.get_project(project).dataset_dir)
    return cfg


def config_path(name: str, configs_dir: Path | None = None) -> Path:
    """Where the named config lives: configs/<name>.yaml."""
    return Path(configs_dir or ws.CONFIGS_DIR) / f"{ws.check_name(name, 'config name')}.yaml"


def save_named_config(cfg: TrainConfig, name: str, configs_dir: Path | None = None) -> Path:
    """Validate the fields and save under configs/<name>.yaml."""
    problems = check_fields(cfg)
    if problems:
        raise ConfigError(" ".join(problems))
    return save_config(cfg, config_path(name, configs_dir))


def list_configs(configs_dir: Path | None = None) -> list[str]:
    """Names of saved configs (without .yaml), sorted."""
    folder = Path(configs_dir or ws.CONFIGS_DIR)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def format_estimate(est: MemoryEstimate, gpu: dict | None) -> str:
    """One-paragraph summary of the estimate against the detected card."""
    parts = (
        f"weights {est.weights} + adapter/optimizer {est.trainable} + activations {est.activations} "
        f"+ logits {est.logits} + overhead {est.overhead}"
    )
    line = f"Estimated peak memory ≈ {est.total:.1f} GiB ({parts})."
    if gpu is None:
        return line + " No GPU detected: training runs on the CPU (slow; fine for the CPU demo)."
    if est.total > gpu["total_gib"]:
        return (
            line + f" WARNING: more than {gpu['name']} has ({gpu['total_gib']} GiB): lower batch_size or "
            "the max lengths, turn gradient checkpointing on (LoRA), or use QLoRA."
        )
    return line + f" Fits {gpu['name']} ({gpu['total_gib']} GiB)."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("presets", help="list the presets")
    new = sub.add_parser("new", help="write configs/<name>.yaml from a preset")
    new.add_argument("preset", choices=PRESETS)
    new.add_argument("--project", default=ws.DEFAULT_PROJECT, help="project whose dataset to train on")
    new.add_argument("--name", required=True, help="config name (saved as configs/<name>.yaml)")
    new.add_argument("--base-model", default=None, help="override base_model")
    new.add_argument("--method", choices=METHODS, default=None, help="override method")
    for cmd in ("check", "show"):
        p = sub.add_parser(cmd, help=f"{cmd} a config YAML")
        p.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "presets":
            for name in PRESETS:
                cfg = load_preset(name)
                print(f"{name}: method {cfg.method}, base_model {cfg.base_model}")
            return 0
        if args.cmd == "new":
            cfg = load_preset(args.preset, args.project)
            cfg.base_model = args.base_model or cfg.base_model
            cfg.method = args.method or cfg.method
            print(f"saved {save_named_config(cfg, args.name)}")
            return 0
        cfg = load_config(args.config)
        if args.cmd == "show":
            print(json.dumps(to_dict(cfg), indent=2, ensure_ascii=False))
            return 0
        gpu = detect_gpu()
        problems = validate_config(cfg, gpu)
        if cfg.base_model and not any("config.json" in p for p in problems):
            print(
                format_estimate(estimate_memory(cfg, read_model_config(cfg.base_model), gpu is not None), gpu)
            )
        for p in problems:
            print(f"problem: {p}")
        model_config = (
            None if any("config.json" in p for p in problems) else read_model_config(cfg.base_model)
        )
        for code, values in config_advice(cfg, model_config):
            print(f"advice: {advice_text(code, values)}")
        print("config OK" if not problems else f"{len(problems)} problem(s)")
        return 1 if problems else 0
    except (ConfigError, ws.WorkspaceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
