"""UI tab: generate question-answer pairs (local model, Zhipu or any OpenAI-compatible server).

Also holds the few helpers the two clean tabs share (backend fields, prompt editor, run driver).
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from blocks.clean import PromptError, StageInputError, StopFlag, StorageError, load_prompt
from blocks.llm import ClientSettings, LLMError, SettingsError, make_client, unload_local_models
from blocks.workspace import WorkspaceError, confine_path, get_project
from ui_common import UIContext

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
    return Path("/dev/nvidiactl").exists()


def stop_flag(project_name: str, stage: str) -> StopFlag:
    """The project's stop file for `stage` (clean or qa)."""
    project = get_project(project_name)
    return StopFlag((project.clean_dir if stage == "clean" else project.qa_dir) / "STOP")


def build_settings(backend, api_key, base_url, model, model_path, batch_size) -> ClientSettings:
    """Client settings from the form; a typed model folder must lie inside the workspace."""
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
    )

    def on_unload(lang: str) -> str:
        count = unload_local_models()
        return ctx.L.pick(lang, f"Unloaded {count} model(s).", f"已卸载 {count} 个模型。")

    fields["unload"] = unload
    fields["on_unload"] = on_unload
    return fields


def build_tab(ctx: UIContext) -> None:
    """Build the QA generation tab inside the current gr.Tab."""
    from blocks.qa import QASettings, generate_qa

    gr.Markdown(
        ctx.L(
            "Turn cleaned pages (or raw crawl text) into question-answer pairs in `qa/qa.jsonl`. "
            "Pages already done are skipped; Stop keeps what is finished.",
            "把清洗后的网页（或原始爬取文本）生成问答对，保存到 `qa/qa.jsonl`。已完成的页面会跳过；停止后已完成部分会保留。",
        )
    )
    f = backend_fields(ctx, ["local", "zhipu", "openai"], "local")
    with gr.Row():
        source = gr.Radio(["auto", "clean", "raw"], value="auto", label=ctx.L("Source text", "输入文本"))
        chunk_tokens = gr.Number(
            value=800, precision=0, label=ctx.L("Chunk size (tokens)", "分块大小（token）")
        )
        overlap = gr.Number(value=80, precision=0, label=ctx.L("Overlap (tokens)", "分块重叠（token）"))
        max_q = gr.Slider(1, 20, value=8, step=1, label=ctx.L("Max questions per chunk", "每块最多问题数"))
    with gr.Row():
        variants = gr.Slider(
            0, 5, value=0, step=1, label=ctx.L("Paraphrases per question", "每个问题的改写数")
        )
        judge = gr.Checkbox(value=False, label=ctx.L("LLM judge checks every answer", "用大模型复核答案"))
        threshold = gr.Slider(
            0, 1, value=0.5, step=0.05, label=ctx.L("Lexical support threshold", "词面支持阈值")
        )
        overwrite = gr.Checkbox(value=False, label=ctx.L("Redo pages already done", "重新生成已完成的页面"))
    _, prompts = prompt_editor(
        ctx,
        [
            ("qa", "QA prompt ({text}, {n}, {title}, {url})", "问答提示词（{text}、{n}、{title}、{url}）"),
            (
                "judge",
                "Judge prompt ({text}, {question}, {answer})",
                "复核提示词（{text}、{question}、{answer}）",
            ),
            ("paraphrase", "Paraphrase prompt ({question}, {k})", "改写提示词（{question}、{k}）"),
        ],
    )
    with gr.Row():
        start = gr.Button(ctx.L("Generate QA pairs", "生成问答对"), variant="primary")
        stop = gr.Button(ctx.L("Stop", "停止"), variant="stop")
    status = gr.Markdown()
    preview = gr.Dataframe(
        headers=["question", "answer", "source_url"], label=ctx.L("First pairs", "前几条问答")
    )

    def on_start(
        project, lang, backend, key, url, model, conc, path, bs, release, *rest, progress=gr.Progress()
    ):
        src, chunk, ovl, mq, var, jdg, thr, over, p_qa, p_judge, p_para = rest
        try:
            settings = QASettings(
                prompt=p_qa,
                judge_prompt=p_judge,
                paraphrase_prompt=p_para,
                source=src,
                chunk_tokens=int(chunk),
                overlap_tokens=int(ovl),
                max_questions=int(mq),
                variants=int(var),
                judge=bool(jdg),
                grounding_threshold=float(thr),
                concurrency=int(conc),
                overwrite=bool(over),
                release_model=bool(release),
            )
            client = make_client(build_settings(backend, key, url, model, path, bs))
            flag = stop_flag(project, "qa")
            flag.clear()
            proj = get_project(project)
            for text in drive_run(generate_qa(proj, client, settings, stop=flag), lang, progress):
                yield text, gr.update()
        except STAGE_ERRORS as exc:
            raise gr.Error(str(exc)) from exc
        yield gr.update(), read_preview(proj.qa_file)

    inputs = [
        ctx.project,
        ctx.lang,
        *[f[k] for k in ("backend", "api_key", "base_url", "model", "concurrency")],
    ]
    inputs += [f["model_path"], f["batch_size"], f["release"], source, chunk_tokens, overlap, max_q, variants]
    inputs += [judge, threshold, overwrite, prompts["qa"], prompts["judge"], prompts["paraphrase"]]
    start.click(on_start, inputs=inputs, outputs=[status, preview])
    stop.click(lambda p, lang: on_stop(ctx, p, lang, "qa"), inputs=[ctx.project, ctx.lang], outputs=status)
    f["unload"].click(f["on_unload"], inputs=ctx.lang, outputs=status)


def on_stop(ctx: UIContext, project: str, lang: str, stage: str) -> str:
    """Ask the running stage to stop after the requests in flight."""
    try:
        stop_flag(project, stage).set()
    except WorkspaceError as exc:
        raise gr.Error(str(exc)) from exc
    return ctx.L.pick(lang, "Stopping after the requests in flight…", "正在停止，等待进行中的请求完成…")


def read_preview(path: Path, n: int = 20) -> list[list[str]]:
    """The first `n` pairs of qa.jsonl as table rows."""
    from blocks.clean import read_jsonl

    return [[r["question"], r["answer"], r["source_url"]] for r in read_jsonl(path)[:n]]
