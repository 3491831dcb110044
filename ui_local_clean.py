"""UI tab: clean crawled pages with a local Hugging Face model (default: the embedded SmolLM2)."""

from __future__ import annotations

import gradio as gr

from blocks.clean import CleanSettings, clean_pages
from blocks.llm import make_client
from blocks.workspace import get_project
from ui_common import (
    STAGE_ERRORS,
    UIContext,
    backend_fields,
    build_settings,
    drive_run,
    on_stop,
    prompt_editor,
    stop_flag,
)


def build_tab(ctx: UIContext) -> None:
    """Build the local clean tab inside the current gr.Tab."""
    gr.Markdown(
        ctx.L(
            "Clean crawled pages with a model on this machine (bf16 on GPU, fp32 on CPU). The model is loaded "
            "once and kept until you unload it or pick another; cleaned text goes to `clean/<id>.txt`.",
            "用本机模型清洗爬取的网页（GPU 上 bf16，CPU 上 fp32）。模型只加载一次，直到卸载或更换；"
            "清洗结果保存在 `clean/<id>.txt`。",
        )
    )
    f = backend_fields(ctx, ["local"], "local")
    with gr.Row():
        chunk_tokens = gr.Number(
            value=1000, precision=0, label=ctx.L("Chunk size (tokens)", "分块大小（token）")
        )
        max_new = gr.Number(
            value=0,
            precision=0,
            label=ctx.L("Max new tokens (0 = 1.5 x chunk)", "最大生成长度（0 = 分块的 1.5 倍）"),
        )
        overwrite = gr.Checkbox(value=False, label=ctx.L("Redo pages already done", "重新处理已完成的页面"))
    _, prompts = prompt_editor(
        ctx, [("clean", "Clean prompt ({text}, {title}, {url})", "清洗提示词（{text}、{title}、{url}）")]
    )
    with gr.Row():
        start = gr.Button(ctx.L("Clean", "开始清洗"), variant="primary")
        stop = gr.Button(ctx.L("Stop", "停止"), variant="stop")
    status = gr.Markdown()

    def on_start(project, lang, path, bs, release, chunk, new, over, prompt, static, progress=gr.Progress()):
        try:
            client = make_client(build_settings("local", "", "", "", path, bs, static, exposed=ctx.exposed))
            flag = stop_flag(project, "clean")
            flag.clear()
            settings = CleanSettings(
                prompt=prompt,
                chunk_tokens=int(chunk),
                max_new_tokens=int(new or 0),
                overwrite=bool(over),
                release_model=bool(release),
            )
            progress(0, desc=ctx.L.pick(lang, "Loading the model…", "正在加载模型…"))
            yield from drive_run(
                clean_pages(get_project(project), client, settings, stop=flag), lang, progress
            )
        except STAGE_ERRORS as exc:
            raise gr.Error(str(exc)) from exc

    inputs = [
        ctx.project,
        ctx.lang,
        f["model_path"],
        f["batch_size"],
        f["release"],
        chunk_tokens,
        max_new,
        overwrite,
    ]
    start.click(on_start, inputs=[*inputs, prompts["clean"], f["static_cache"]], outputs=status)
    stop.click(lambda p, lang: on_stop(ctx, p, lang, "clean"), inputs=[ctx.project, ctx.lang], outputs=status)
    f["unload"].click(f["on_unload"], inputs=ctx.lang, outputs=status)
