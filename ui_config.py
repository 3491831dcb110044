"""UI tab: write a validated training config (preset -> edit -> validate + memory estimate -> save)."""

from __future__ import annotations

import gradio as gr

from blocks import config as C
from blocks.workspace import WorkspaceError, confine_path, get_project
from ui_common import UIContext

# (field path, kind) in the order of the form's inputs; kind converts the component's value.
FIELDS = [
    ("base_model", str),
    ("dataset_dir", str),
    ("method", str),
    ("init_adapter", str),
    ("lora.rank", int),
    ("lora.alpha", int),
    ("lora.dropout", float),
    ("lora.target_modules", list),
    ("ptuning.num_virtual_tokens", int),
    ("ptuning.prefix_projection", bool),
    ("ptuning.projection_hidden_size", int),
    ("learning_rate", float),
    ("num_epochs", float),
    ("max_steps", int),
    ("batch_size", int),
    ("grad_accum", int),
    ("max_input_length", int),
    ("max_output_length", int),
    ("warmup_ratio", float),
    ("lr_scheduler", str),
    ("logging_steps", int),
    ("eval_steps", int),
    ("save_steps", int),
    ("save_total_limit", int),
    ("seed", int),
    ("precision", str),
    ("gradient_checkpointing", str),
    ("checkpoint_layers", int),
    ("torch_compile", str),
    ("group_by_length", bool),
]


def config_to_values(cfg: C.TrainConfig) -> list:
    """Form values for `cfg`, in FIELDS order."""
    values = []
    for path, kind in FIELDS:
        obj = cfg
        for part in path.split("."):
            obj = getattr(obj, part)
        values.append(", ".join(obj) if kind is list else obj)
    return values


def values_to_config(values: list) -> C.TrainConfig:
    """A TrainConfig from form values; a number field left empty raises ConfigError naming it."""
    cfg = C.TrainConfig()
    for (path, kind), value in zip(FIELDS, values, strict=True):
        if kind in (int, float) and value is None:
            raise C.ConfigError(f"{path} is empty: enter a number.")
        if kind is list:
            value = [m.strip() for m in (value or "").split(",") if m.strip()]
        elif kind is int:
            value = int(value)
        elif kind is str:
            value = (value or "").strip()
        *parents, name = path.split(".")
        obj = cfg
        for part in parents:
            obj = getattr(obj, part)
        setattr(obj, name, value)
    return cfg


def confine_config_paths(cfg: C.TrainConfig) -> None:
    """Paths typed in the browser must stay inside the workspace (or a --model-root)."""
    for name in ("base_model", "dataset_dir", "init_adapter"):
        if getattr(cfg, name):
            confine_path(C.resolve_path(getattr(cfg, name)))


def describe_config(cfg: C.TrainConfig, lang: str) -> str:
    """Markdown: problems, derived dimensions and the memory estimate against the detected card."""
    zh = lang == "zh"
    gpu = C.detect_gpu()
    problems = C.validate_config(cfg, gpu)
    lines = []
    if problems:
        lines.append("### " + ("需要修改的问题" if zh else "Problems to fix"))
        lines += [f"- {p}" for p in problems]
    else:
        lines.append("### " + ("配置有效 ✓" if zh else "Config is valid ✓"))
    try:
        model_config = C.read_model_config(cfg.base_model)
    except C.ConfigError:
        return "\n".join(lines)
    advice = C.config_advice(cfg, model_config)
    if advice:
        lines.append("### " + ("建议" if zh else "Advice"))
        lines += [f"- {C.advice_text(code, values, ADVICE_ZH if zh else None)}" for code, values in advice]
    derived = ("派生参数（来自模型 config.json）" if zh else "Derived from the model's config.json") + ": "
    if cfg.method == "ptuning":
        dims = C.prefix_dimensions(model_config)
        derived += (
            f"prefix layers {dims['num_layers']}, KV heads {dims['kv_heads']}, head dim {dims['head_dim']}"
        )
    else:
        try:
            derived += "LoRA target modules " + ", ".join(C.target_modules(cfg, model_config))
        except C.ConfigError:
            derived += "—"
    lines.append(derived)
    switches = C.resolve_switches(cfg, cuda=gpu is not None, bf16_supported=bool(gpu and gpu["bf16"]))
    lines.append(
        f"precision {switches['precision']}, gradient checkpointing {'on' if switches['gradient_checkpointing'] else 'off'}"
    )
    if not C.check_fields(cfg):
        lines.append(C.format_estimate(C.estimate_memory(cfg, model_config, cuda=gpu is not None), gpu))
    return "\n\n".join(lines)


ADVICE_ZH = {
    "ptuning_small_model": (
        "P-tuning v2 在 {millions}M 参数的小模型上几乎学不到东西：内置 135M 模型用 CPU 演示设置训练后损失仍为 "
        "3.88，15 个改写问题答对 0 个（LoRA 答对 11 个）。小模型和 CPU 训练请选 LoRA（或 QLoRA）；P-tuning v2 "
        "适合 6B 以上的模型（如 GLM-4），在 GPU 上训练数百步。"
    ),
    "max_steps_override": (
        "已设置最大步数 {steps}，因此轮数（{epochs}）不生效：训练在 {steps} 步后结束{runs_text}。"
        "若要按轮数训练，请把最大步数设为 -1。"
    ),
    "runs_text": "（约为训练集的 {runs} 遍）",
}


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    L = ctx.L
    gr.Markdown(
        L(
            "Pick a preset, adjust it, **Validate** (checks the model, the dataset and this machine, and "
            "estimates peak GPU memory), then **Save** it under a name for the Training tab.",
            "选择预设并调整参数，点击 **校验**（检查模型、数据集和本机环境，并估算显存峰值），"
            "然后以名称 **保存**，供训练标签页使用。",
        )
    )
    with gr.Row():
        preset = gr.Dropdown(list(C.PRESETS), value="cpu-demo", label=L("Preset", "预设"))
        load_preset_btn = gr.Button(L("Load preset", "载入预设"))
        saved = gr.Dropdown(C.list_configs(), value=None, label=L("Saved configs", "已保存的配置"))
        load_saved_btn = gr.Button(L("Load saved config", "载入已保存的配置"))
    defaults = config_to_values(C.load_preset("cpu-demo"))
    v = dict(zip([f for f, _ in FIELDS], defaults, strict=True))
    with gr.Row():
        base_model = gr.Textbox(v["base_model"], label=L("Base model folder", "基座模型目录"))
        dataset_dir = gr.Textbox(
            "", label=L("Dataset folder (empty: the project's)", "数据集目录（留空：当前项目的数据集）")
        )
        method = gr.Radio(list(C.METHODS), value=v["method"], label=L("Method", "方法"))
        init_adapter = gr.Textbox("", label=L("Start from adapter (optional)", "从已有适配器开始（可选）"))
    with gr.Accordion(L("LoRA / QLoRA", "LoRA / QLoRA"), open=True):
        with gr.Row():
            lora_rank = gr.Number(v["lora.rank"], precision=0, label=L("Rank", "秩 (rank)"))
            lora_alpha = gr.Number(v["lora.alpha"], precision=0, label="Alpha")
            lora_dropout = gr.Number(v["lora.dropout"], label="Dropout")
            lora_targets = gr.Textbox(
                "",
                label=L("Target modules (empty: per architecture)", "目标模块（留空：按模型架构自动选择）"),
            )
    with gr.Accordion(L("P-tuning v2", "P-tuning v2"), open=False):
        with gr.Row():
            vt = gr.Number(
                v["ptuning.num_virtual_tokens"], precision=0, label=L("Virtual tokens", "虚拟 token 数")
            )
            projection = gr.Checkbox(v["ptuning.prefix_projection"], label=L("Prefix projection", "前缀投影"))
            projection_hidden = gr.Number(
                v["ptuning.projection_hidden_size"],
                precision=0,
                label=L("Projection hidden size", "投影隐藏层大小"),
            )
    with gr.Row():
        lr = gr.Number(v["learning_rate"], label=L("Learning rate", "学习率"))
        epochs = gr.Number(v["num_epochs"], label=L("Epochs", "训练轮数"))
        max_steps = gr.Number(
            v["max_steps"], precision=0, label=L("Max steps (-1: use epochs)", "最大步数（-1：按轮数）")
        )
        batch = gr.Number(v["batch_size"], precision=0, label=L("Batch size", "批大小"))
        accum = gr.Number(v["grad_accum"], precision=0, label=L("Gradient accumulation", "梯度累积"))
    with gr.Row():
        max_in = gr.Number(v["max_input_length"], precision=0, label=L("Max input tokens", "最大输入长度"))
        max_out = gr.Number(v["max_output_length"], precision=0, label=L("Max output tokens", "最大输出长度"))
        warmup = gr.Number(v["warmup_ratio"], label=L("Warmup ratio", "预热比例"))
        scheduler = gr.Dropdown(
            list(C.SCHEDULERS), value=v["lr_scheduler"], label=L("LR scheduler", "学习率调度")
        )
    with gr.Row():
        logging_steps = gr.Number(
            v["logging_steps"], precision=0, label=L("Log every (steps)", "日志间隔（步）")
        )
        eval_steps = gr.Number(v["eval_steps"], precision=0, label=L("Eval every (steps)", "评估间隔（步）"))
        save_steps = gr.Number(v["save_steps"], precision=0, label=L("Save every (steps)", "保存间隔（步）"))
        keep = gr.Number(v["save_total_limit"], precision=0, label=L("Checkpoints kept", "保留检查点数"))
        seed = gr.Number(v["seed"], precision=0, label=L("Seed", "随机种子"))
    with gr.Row():
        precision = gr.Dropdown(list(C.PRECISIONS), value=v["precision"], label=L("Precision", "精度"))
        checkpointing = gr.Dropdown(
            list(C.SWITCHES),
            value=v["gradient_checkpointing"],
            label=L("Gradient checkpointing", "梯度检查点"),
            info=L(
                "Recompute layers in backward instead of keeping activations: less memory, ~25% slower; "
                "auto = on with a GPU.",
                "反向时重算各层而不保存激活：省显存，约慢 25%；auto = 有 GPU 时开启。",
            ),
        )
        checkpoint_layers = gr.Number(
            v["checkpoint_layers"],
            precision=0,
            label=L("Layers checkpointed", "检查点层数"),
            info=L(
                "-1 = all; fewer is faster if memory allows (see the estimate).",
                "-1 = 全部；显存够时设少一些更快（见估算）。",
            ),
        )
        torch_compile = gr.Dropdown(
            list(C.SWITCHES),
            value=v["torch_compile"],
            label=L("Compile layers (not QLoRA)", "编译各层（QLoRA 除外）"),
            info=L(
                "torch.compile each layer: faster, a minute to compile first; auto = on with a GPU.",
                "用 torch.compile 编译各层：更快，首次需约一分钟；auto = 有 GPU 时开启。",
            ),
        )
        group_by_length = gr.Checkbox(
            v["group_by_length"],
            label=L("Group batches by length", "按长度分组批次"),
            info=L(
                "Batches of similar lengths: less padding, faster steps; same data each epoch.",
                "长度相近的样本组成批次：填充更少、训练更快；每轮数据不变。",
            ),
        )
    with gr.Row():
        validate_btn = gr.Button(L("Validate", "校验"), variant="secondary")
        name = gr.Textbox("", label=L("Config name", "配置名称"), placeholder="my-lora")
        save_btn = gr.Button(L("Save config", "保存配置"), variant="primary")
    report = gr.Markdown()

    form = [
        base_model, dataset_dir, method, init_adapter, lora_rank, lora_alpha, lora_dropout, lora_targets,
        vt, projection, projection_hidden, lr, epochs, max_steps, batch, accum, max_in, max_out, warmup,
        scheduler, logging_steps, eval_steps, save_steps, keep, seed, precision, checkpointing,
        checkpoint_layers, torch_compile, group_by_length,
    ]  # fmt: skip

    def read_form(project: str, values: list) -> C.TrainConfig:
        cfg = values_to_config(list(values))
        if not cfg.dataset_dir:
            cfg.dataset_dir = str(get_project(project).dataset_dir)
        confine_config_paths(cfg)
        return cfg

    def on_load_preset(name_: str, project: str):
        try:
            cfg = C.load_preset(name_, project)
        except (C.ConfigError, WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        return config_to_values(cfg)

    def on_load_saved(name_: str):
        if not name_:
            raise gr.Error("Choose a saved config first. / 请先选择已保存的配置。")
        try:
            return config_to_values(C.load_config(C.config_path(name_)))
        except (C.ConfigError, WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc

    def on_validate(project: str, lang: str, *values):
        try:
            cfg = read_form(project, values)
        except (C.ConfigError, WorkspaceError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        return describe_config(cfg, lang)

    def on_save(name_: str, project: str, lang: str, *values):
        try:
            cfg = read_form(project, values)
            path = C.save_named_config(cfg, name_)
        except (C.ConfigError, WorkspaceError, ValueError) as exc:
            raise gr.Error(str(exc)) from exc
        saved_msg = L.pick(lang, f"Saved **{path}**.", f"已保存 **{path}**。")
        return saved_msg + "\n\n" + describe_config(cfg, lang), gr.update(
            choices=C.list_configs(), value=path.stem
        )

    def on_method(method_: str, current: str):
        # QLoRA's 4-bit layers do not compile: do not offer "on" there
        choices = list(C.SWITCHES) if method_ != "qlora" else ["auto", "off"]
        return gr.update(choices=choices, value=current if current in choices else "auto")

    load_preset_btn.click(on_load_preset, [preset, ctx.project], form)
    load_saved_btn.click(on_load_saved, [saved], form)
    validate_btn.click(on_validate, [ctx.project, ctx.lang, *form], report, show_progress="full")
    save_btn.click(on_save, [name, ctx.project, ctx.lang, *form], [report, saved])
    method.change(on_method, [method, torch_compile], torch_compile, show_progress="hidden")
