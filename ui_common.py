"""Shared UI plumbing: the bilingual text switch and the context every tab receives.

Tabs write `label=ctx.L("Start URL", "起始网址")`; after the whole page is built,
`Bilingual.bind` finds every component showing one of those strings and wires the
language switch to swap them. No keys, no registry of components to maintain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import gradio as gr

from blocks.clean import PromptError, StageInputError, StopFlag, StorageError, load_prompt
from blocks.config import gpu_count
from blocks.llm import ClientSettings, LLMError, SettingsError, unload_local_models
from blocks.workspace import WorkspaceError, confine_path, get_project

LANGS = {"en": "English", "zh": "中文"}
_TEXT_ATTRS = ("label", "info", "placeholder", "value")


class Bilingual:
    """Returns text in the start language and remembers its translation for the switch."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang if lang in LANGS else "en"
        self.pairs: dict[str, tuple[str, str]] = {}

    def __call__(self, en: str, zh: str) -> str:
        shown = zh if self.lang == "zh" else en
        self.pairs[shown] = (en, zh)
        return shown

    def pick(self, lang: str, en: str, zh: str) -> str:
        """Text for a message built at run time in the session's language."""
        return zh if lang == "zh" else en

    def bind(self, blocks: gr.Blocks, switch: gr.Radio) -> None:
        """Wire `switch` so choosing a language rewrites every registered string on the page."""
        targets: list[tuple[gr.components.Component, dict[str, tuple[str, str]]]] = []
        for block in blocks.blocks.values():
            if block is switch:
                continue
            found = {}
            for attr in _TEXT_ATTRS:
                text = getattr(block, attr, None)
                if isinstance(text, str) and text in self.pairs:
                    if attr == "value" and not isinstance(block, (gr.Markdown, gr.Button, gr.HTML)):
                        continue  # never overwrite a user's input
                    found[attr] = self.pairs[text]
            if found:
                targets.append((block, found))

        def switch_language(choice: str):
            lang = "zh" if choice == LANGS["zh"] else "en"
            updates = []
            for _block, found in targets:
                kwargs = {attr: (pair[1] if lang == "zh" else pair[0]) for attr, pair in found.items()}
                updates.append(gr.update(**kwargs))
            return [lang, *updates]

        switch.change(
            switch_language,
            inputs=switch,
            outputs=[self.lang_state, *[b for b, _ in targets]],
            show_progress="hidden",
        )

    lang_state: gr.State


@dataclass
class UIContext:
    """What every tab builder gets: the project picker, text helper and launch settings."""

    L: Bilingual
    project: gr.Dropdown
    lang: gr.State
    default_model: str
    model_roots: list[str] = field(default_factory=list)
    exposed: bool = False  # bound to a non-loopback address
    tab: gr.Tab | None = None  # the tab being built (its select event refreshes lists from disk)


# ---------------------------------------------------------------- shared by the LLM-stage tabs
# (API clean, local clean, QA generation): backend fields, prompt editor, run driver, stop button


STAGE_ERRORS = (
    StageInputError,
    PromptError,
    SettingsError,
    WorkspaceError,
    LLMError,
    StorageError,
    ValueError,
)


def has_gpu() -> bool:
    """Whether an NVIDIA GPU is present, without importing torch (the page must load fast)."""
    return gpu_count() > 0


def stop_flag(project_name: str, stage: str) -> StopFlag:
    """The project's stop file for `stage` (clean or qa)."""
    project = get_project(project_name)
    return StopFlag((project.clean_dir if stage == "clean" else project.qa_dir) / "STOP")


def build_settings(
    backend, api_key, base_url, model, model_path, batch_size, static_cache=False, exposed=False
) -> ClientSettings:
    """Client settings from the form; a typed model folder must lie inside the workspace, and an exposed
    app's API base URL must be a public address (as the crawler's pages must)."""
    path = ""
    if backend == "local":
        path = str(confine_path(model_path)) if model_path else ""
    return ClientSettings(
        backend=backend,
        model=(model or "").strip(),
        base_url=(base_url or "").strip(),
        api_key=(api_key or "").strip(),
        model_path=path,
        batch_size=int(batch_size or 8),
        static_cache=bool(static_cache),
        allow_private=not exposed,
    )


def drive_run(gen, lang: str, progress: gr.Progress):
    """Show a stage generator's progress (bar with counts + ETA) and end with its truthful summary."""
    last = 0.0
    report = None
    for report in gen:
        eta = report.eta_s()
        eta_text = f", ETA {eta:.0f} s" if eta is not None else ""
        progress(
            (report.processed, max(report.total, 1)), desc=f"{report.processed}/{report.total}{eta_text}"
        )
        if time.monotonic() - last > 0.5:
            last = time.monotonic()
            yield report.summary(lang) + eta_text
    if report is not None:
        text = report.summary(lang)
        if report.failures:
            lines = [f"- `{pid}`: {msg[:200]}" for pid, msg in list(report.failures.items())[:20]]
            text += "\n\n" + "\n".join(lines)
        yield text


def prompt_editor(
    ctx: UIContext, names: list[tuple[str, str, str]]
) -> tuple[gr.Radio, dict[str, gr.Textbox]]:
    """Editable prompt boxes (defaults from configs/prompts/) and a language picker that reloads them."""
    boxes = {}
    with gr.Accordion(ctx.L("Prompts (editable)", "提示词（可编辑）"), open=False):
        lang = gr.Radio(
            ["zh", "en"],
            value="zh",
            label=ctx.L("Prompt language (reloads the defaults)", "提示词语言（切换会恢复默认）"),
        )
        for name, en, zh in names:
            boxes[name] = gr.Textbox(
                value=load_prompt(name, "zh"), label=ctx.L(en, zh), lines=8, max_lines=20
            )
    lang.change(
        lambda lg: [load_prompt(n, lg) for n, _, _ in names], inputs=lang, outputs=list(boxes.values())
    )
    return lang, boxes


def backend_fields(ctx: UIContext, choices: list[str], value: str) -> dict:
    """Backend picker plus the fields each backend needs; only the chosen backend's fields are shown."""
    backend = gr.Radio(choices, value=value, label=ctx.L("Backend", "后端"))
    with gr.Group(visible=value != "local") as api_group:
        with gr.Row():
            api_key = gr.Textbox(
                type="password",
                label=ctx.L("API key (kept in memory only)", "API 密钥（仅保存在内存中）"),
                placeholder=ctx.L("empty = ZHIPUAI_API_KEY / OPENAI_API_KEY", "留空则读取环境变量"),
            )
            base_url = gr.Textbox(
                label=ctx.L("Base URL", "接口地址"),
                placeholder=ctx.L(
                    "Zhipu: empty = official; OpenAI-compatible: http://host:8000/v1",
                    "智谱：留空为官方地址；OpenAI 兼容：http://host:8000/v1",
                ),
            )
            model = gr.Textbox(label=ctx.L("Model", "模型"), placeholder="glm-4-flash")
            concurrency = gr.Slider(1, 16, value=4, step=1, label=ctx.L("Parallel requests", "并发请求数"))
    with gr.Group(visible=value == "local") as local_group:
        with gr.Row():
            model_path = gr.Textbox(
                value=ctx.default_model, label=ctx.L("Local model folder", "本地模型目录")
            )
            batch_size = gr.Slider(1, 64, value=8, step=1, label=ctx.L("Batch size", "批大小"))
            release = gr.Checkbox(
                value=has_gpu(),
                label=ctx.L(
                    "Release the model after the run (frees the GPU)", "运行结束后释放模型（腾出显卡）"
                ),
            )
        static_cache = gr.Checkbox(
            value=False,
            visible=has_gpu(),
            label=ctx.L(
                "Static KV cache (GPU): compiled, much faster for long runs; the first batch compiles",
                "静态 KV 缓存（GPU）：编译后长任务快很多；首批需要编译",
            ),
        )
        unload = gr.Button(ctx.L("Unload model now", "立即卸载模型"), size="sm")
    backend.change(
        lambda b: (gr.update(visible=b != "local"), gr.update(visible=b == "local")),
        inputs=backend,
        outputs=[api_group, local_group],
    )
    fields = dict(
        backend=backend,
        api_key=api_key,
        base_url=base_url,
        model=model,
        concurrency=concurrency,
        model_path=model_path,
        batch_size=batch_size,
        release=release,
        static_cache=static_cache,
    )

    def on_unload(lang: str) -> str:
        count = unload_local_models()
        return ctx.L.pick(lang, f"Unloaded {count} model(s).", f"已卸载 {count} 个模型。")

    fields["unload"] = unload
    fields["on_unload"] = on_unload
    return fields


def on_stop(ctx: UIContext, project: str, lang: str, stage: str) -> str:
    """Ask the running stage to stop after the requests in flight."""
    try:
        stop_flag(project, stage).set()
    except WorkspaceError as exc:
        raise gr.Error(str(exc)) from exc
    return ctx.L.pick(lang, "Stopping after the requests in flight…", "正在停止，等待进行中的请求完成…")
