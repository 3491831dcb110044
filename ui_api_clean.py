"""UI tab: clean pages with a hosted model (Zhipu or any OpenAI-compatible server), then generate QA.

The seed's one-pass flow: cleaned text goes to clean/<id>.txt and, if ticked, QA pairs from it
to qa/qa.jsonl, with the same client and settings.
"""

from __future__ import annotations

import gradio as gr

from blocks.clean import CleanSettings, clean_pages
from blocks.llm import make_client
from blocks.qa import QASettings, generate_qa
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
    """Build the API clean tab inside the current gr.Tab."""
    gr.Markdown(
        ctx.L(
            "Clean crawled pages with Zhipu GLM (key from the field or `ZHIPUAI_API_KEY`) or any "
            "OpenAI-compatible server (vLLM, Ollama, DeepSeek…), then optionally generate QA pairs. "
            "The key is never saved or shown again.",
            "用智谱 GLM（密钥填在下方或设置 `ZHIPUAI_API_KEY`）或任意 OpenAI 兼容服务（vLLM、Ollama、DeepSeek 等）"
            "清洗爬取的网页，并可接着生成问答对。密钥不会被保存或回显。",
        )
    )
    f = backend_fields(ctx, ["zhipu", "openai"], "zhipu")
    with gr.Row():
        chunk_tokens = gr.Number(
            value=1000, precision=0, label=ctx.L("Chunk size (tokens)", "分块大小（token）")
        )
        also_qa = gr.Checkbox(value=True, label=ctx.L("Also generate QA pairs", "同时生成问答对"))
        overwrite = gr.Checkbox(value=False, label=ctx.L("Redo pages already done", "重新处理已完成的页面"))
    _, prompts = prompt_editor(
        ctx,
        [
            ("clean", "Clean prompt ({text}, {title}, {url})", "清洗提示词（{text}、{title}、{url}）"),
            ("qa", "QA prompt ({text}, {n}, {title}, {url})", "问答提示词（{text}、{n}、{title}、{url}）"),
        ],
    )
    with gr.Row():
        start = gr.Button(ctx.L("Clean", "开始清洗"), variant="primary")
        stop = gr.Button(ctx.L("Stop", "停止"), variant="stop")
    status = gr.Markdown()

    def on_start(
        project,
        lang,
        backend,
        key,
        url,
        model,
        conc,
        chunk,
        qa_too,
        over,
        p_clean,
        p_qa,
        progress=gr.Progress(),
    ):
        try:
            client = make_client(build_settings(backend, key, url, model, "", 8, exposed=ctx.exposed))
            proj = get_project(project)
            flag = stop_flag(project, "clean")
            flag.clear()
            settings = CleanSettings(
                prompt=p_clean, chunk_tokens=int(chunk), concurrency=int(conc), overwrite=bool(over)
            )
            text = ""
            for text in drive_run(clean_pages(proj, client, settings, stop=flag), lang, progress):
                yield text
            if qa_too and not flag.is_set():
                qa_settings = QASettings(
                    prompt=p_qa, source="clean", concurrency=int(conc), overwrite=bool(over)
                )
                for qa_text in drive_run(generate_qa(proj, client, qa_settings, stop=flag), lang, progress):
                    yield text + "\n\n" + qa_text
        except STAGE_ERRORS as exc:
            raise gr.Error(str(exc)) from exc

    inputs = [
        ctx.project,
        ctx.lang,
        *[f[k] for k in ("backend", "api_key", "base_url", "model", "concurrency")],
    ]
    inputs += [chunk_tokens, also_qa, overwrite, prompts["clean"], prompts["qa"]]
    start.click(on_start, inputs=inputs, outputs=status)
    stop.click(lambda p, lang: on_stop(ctx, p, lang, "clean"), inputs=[ctx.project, ctx.lang], outputs=status)
