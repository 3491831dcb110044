"""UI tab: generate question-answer pairs (local model, Zhipu or any OpenAI-compatible server)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

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
        method = gr.Radio(
            ["auto", "sentence", "passage"],
            value="auto",
            label=ctx.L(
                "Method (auto: a question per sentence for small local models, JSON pairs per chunk otherwise)",
                "方式（auto：小型本地模型逐句出题，其他模型按文本块生成 JSON 问答）",
            ),
        )
        variants = gr.Dropdown(
            ["auto", "0", "1", "2", "3", "4", "5"],
            value="auto",
            label=ctx.L(
                "Paraphrases per question (auto: 2, none for small local models)",
                "每个问题的改写数（auto：2，小型本地模型不改写）",
            ),
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
            (
                "question",
                "Sentence-method prompt (few-shot: 'statement => question' blocks, then {title}: {fact})",
                "逐句出题提示词（示例：“陈述 => 问题”段落，最后是 {title}：{fact}）",
            ),
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
        src, chunk, ovl, mq, var, jdg, thr, over, p_qa, p_judge, p_para, static, *newer = rest
        meth, p_question = [*newer, "auto", ""][:2]  # inputs added later; older callers leave them out
        try:
            settings = QASettings(
                prompt=p_qa,
                judge_prompt=p_judge,
                paraphrase_prompt=p_para,
                question_prompt=custom_question_prompt(p_question),
                method=meth,
                source=src,
                chunk_tokens=int(chunk),
                overlap_tokens=int(ovl),
                max_questions=int(mq),
                variants=None if var == "auto" else int(var),
                judge=bool(jdg),
                grounding_threshold=float(thr),
                concurrency=int(conc),
                overwrite=bool(over),
                release_model=bool(release),
            )
            client = make_client(
                build_settings(backend, key, url, model, path, bs, static, exposed=ctx.exposed)
            )
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
    inputs += [f["static_cache"], method, prompts["question"]]
    start.click(on_start, inputs=inputs, outputs=[status, preview])
    stop.click(lambda p, lang: on_stop(ctx, p, lang, "qa"), inputs=[ctx.project, ctx.lang], outputs=status)
    f["unload"].click(f["on_unload"], inputs=ctx.lang, outputs=status)


def custom_question_prompt(text: str) -> str:
    """The sentence-method prompt the user edited, or '' for a default (each fact then gets the one
    in its own language, whichever default the editor shows)."""
    from blocks.clean import load_prompt

    defaults = {load_prompt("question", lang).strip() for lang in ("en", "zh")}
    return "" if text.strip() in defaults else text


def read_preview(path: Path, n: int = 20) -> list[list[str]]:
    """The first `n` pairs of qa.jsonl as table rows."""
    from blocks.clean import read_jsonl

    return [[r["question"], r["answer"], r["source_url"]] for r in read_jsonl(path)[:n]]
