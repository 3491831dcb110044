"""UI tab: chat with a trained run (or a base model), compare it with its base, export it (calls blocks.chat/export)."""

from __future__ import annotations

import gradio as gr

from blocks.chat import (
    BaseModelMovedError,
    ChatError,
    GenParams,
    LoadedModel,
    ask_messages,
    list_checkpoints,
    list_runs,
    load_model,
    stream_reply,
    unload_model,
)
from blocks.export import ExportError, default_export_dir, export_model
from blocks.index import RetrievalError, cited_hits, has_index
from blocks.workspace import WorkspaceError, check_name, confine_path, get_project
from ui_common import UIContext


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    L, pick = ctx.L, ctx.L.pick
    # Each browser session holds its own model; closing the tab frees it.
    loaded_state = gr.State(None, delete_callback=unload_model)
    try:
        runs = list_runs(get_project(ctx.project.value).runs_dir)
        first_ckpts = list_checkpoints(get_project(ctx.project.value).run_dir(runs[0])) if runs else []
    except WorkspaceError:
        runs, first_ckpts = [], []
    with gr.Row():
        run = gr.Dropdown(choices=runs, value=runs[0] if runs else None, label=L("Run", "训练运行"), scale=2)
        checkpoint = gr.Dropdown(
            choices=first_ckpts,
            value=first_ckpts[0] if first_ckpts else None,
            label=L("Checkpoint", "检查点"),
            scale=2,
        )
        refresh_btn = gr.Button(L("Refresh list", "刷新列表"), scale=1)
    with gr.Row():
        base_only = gr.Checkbox(
            value=False, label=L("Base model only (no adapter)", "仅基座模型（不加载适配器）")
        )
        base_path = gr.Textbox(
            label=L("Base model folder", "基座模型目录"),
            info=L(
                "Leave empty to use the base recorded in the checkpoint (or the embedded model for 'base "
                "model only'). Fill in if the base model was moved.",
                "留空则使用检查点中记录的基座模型（“仅基座模型”时使用内置模型）。基座模型被移动时请填写新路径。",
            ),
            scale=3,
        )
    with gr.Row():
        load_btn = gr.Button(L("Load", "加载"), variant="primary")
        unload_btn = gr.Button(L("Unload", "卸载"))
    status = gr.Markdown(L("No model loaded.", "尚未加载模型。"))

    with gr.Accordion(L("System prompt and sampling", "系统提示词与采样参数"), open=False):
        system = gr.Textbox(label=L("System prompt", "系统提示词"), lines=2)
        with gr.Row():
            temperature = gr.Slider(
                0, 2, value=0.7, step=0.05, label=L("Temperature (0 = greedy)", "温度（0 为贪心）")
            )
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(16, 2048, value=256, step=16, label=L("Max new tokens", "最大生成长度"))
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label=L("Repetition penalty", "重复惩罚"))
    try:
        indexed = has_index(get_project(ctx.project.value))
    except WorkspaceError:
        indexed = False
    retrieve = gr.Checkbox(
        value=indexed,
        label=L(
            "Answer from the site's pages and cite them (retrieval index)",
            "根据网站页面回答并给出来源（检索索引）",
        ),
        info=L(
            "On when the project has an index (built after crawl/clean, or: python -m blocks.index).",
            "项目有索引时默认开启（爬取/清洗后自动建立，或运行 python -m blocks.index）。",
        ),
    )
    chatbot = gr.Chatbot(type="messages", label=L("Conversation", "对话"), height=420)
    with gr.Row():
        question = gr.Textbox(label=L("Your question", "你的问题"), scale=5, lines=1)
        send_btn = gr.Button(L("Send", "发送"), variant="primary", scale=1)
        stop_btn = gr.Button(L("Stop", "停止"), variant="stop", scale=1)
        clear_btn = gr.Button(L("Clear", "清空"), scale=1)

    with gr.Accordion(L("Compare base vs fine-tuned", "对比基座模型与微调模型"), open=False):
        cmp_question = gr.Textbox(label=L("Question to compare", "用于对比的问题"))
        cmp_btn = gr.Button(L("Ask both", "同时提问"))
        with gr.Row():
            cmp_base = gr.Textbox(label=L("Base model", "基座模型"), lines=6, interactive=False)
            cmp_tuned = gr.Textbox(label=L("Fine-tuned model", "微调模型"), lines=6, interactive=False)

    with gr.Accordion(L("Export", "导出"), open=False):
        gr.Markdown(
            L(
                "LoRA is merged into its base model and saved as a standalone model folder. P-tuning v2 "
                "cannot be merged: the adapter is copied with a reference to its base model.",
                "LoRA 会合并进基座模型，保存为独立的模型目录。P-tuning v2 无法合并：只复制适配器并记录其基座模型。",
            )
        )
        export_dir = gr.Textbox(
            label=L("Export folder", "导出目录"),
            info=L(
                "Empty: data/<project>/exports/<run>-<checkpoint>",
                "留空：data/<项目>/exports/<运行>-<检查点>",
            ),
        )
        export_btn = gr.Button(L("Export selected checkpoint", "导出所选检查点"))
        export_status = gr.Markdown()

    def params_of(temp, tp, mx, rp) -> GenParams:
        return GenParams(float(temp), float(tp), int(mx), float(rp))

    def selected_adapter(project: str, run_id: str | None, ckpt: str | None, lang: str):
        """The adapter folder picked in the dropdowns (names checked: they become paths)."""
        if not run_id or not ckpt:
            raise gr.Error(
                pick(
                    lang,
                    "Pick a run and a checkpoint first (train one in the Training tab), or tick 'Base model only'.",
                    "请先选择训练运行和检查点（在训练页训练一个），或勾选“仅基座模型”。",
                )
            )
        try:
            return get_project(project).run_dir(run_id) / check_name(ckpt, "checkpoint")
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc

    def typed_path(text: str):
        try:
            return confine_path(text) if (text or "").strip() else None
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc

    def on_refresh(project: str, current: str | None):
        try:
            runs = list_runs(get_project(project).runs_dir)
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc
        value = current if current in runs else (runs[0] if runs else None)
        return gr.update(choices=runs, value=value)

    def on_run(project: str, run_id: str | None):
        if not run_id:
            return gr.update(choices=[], value=None)
        try:
            names = list_checkpoints(get_project(project).run_dir(run_id))
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc
        return gr.update(choices=names, value=names[0] if names else None)

    def on_load(project, run_id, ckpt, only_base, base_text, loaded, lang, progress=gr.Progress()):
        base = typed_path(base_text)
        adapter = None if only_base else selected_adapter(project, run_id, ckpt, lang)
        unload_model(loaded)
        progress(0.1, desc=pick(lang, "Loading model…", "正在加载模型…"))
        try:
            new = load_model(base or (ctx.default_model if only_base else None), adapter)
        except BaseModelMovedError as exc:
            gr.Warning(str(exc))
            msg = pick(
                lang,
                f"**Base model not found** at `{exc.recorded}`. Enter its new folder in 'Base model folder' "
                "and press Load again.",
                f"**找不到基座模型** `{exc.recorded}`。请在“基座模型目录”中填写新路径后重新加载。",
            )
            return None, msg
        except (ChatError, OSError) as exc:
            raise gr.Error(str(exc)) from exc
        return new, pick(lang, "**Loaded:** ", "**已加载：** ") + new.describe()

    def on_unload(loaded, lang):
        unload_model(loaded)
        return None, pick(lang, "Unloaded: memory freed.", "已卸载，内存已释放。")

    def require_model(loaded: LoadedModel | None, lang: str) -> LoadedModel:
        if loaded is None or loaded.model is None:
            raise gr.Error(pick(lang, "Load a model first.", "请先加载模型。"))
        return loaded

    def on_send(text, history, sys_prompt, temp, tp, mx, rp, use_index, loaded, project, lang):
        loaded = require_model(loaded, lang)
        history = list(history or [])
        try:
            grounded_in = get_project(project) if use_index else None
            messages, hits = ask_messages(history, text, sys_prompt or "", grounded_in)
            loaded.stop_event.clear()
            stream = stream_reply(loaded, messages, params_of(temp, tp, mx, rp), stop_event=loaded.stop_event)
            history += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
            yield "", history
            for piece in stream:
                history[-1]["content"] += piece
                yield "", history
            if hits:
                links = "\n".join(
                    f"[{n}] [{h.passage.title or h.passage.url}]({h.passage.url})"
                    for n, h in enumerate(cited_hits(history[-1]["content"], hits), 1)
                )
                history[-1]["content"] += "\n\n" + pick(lang, "**Sources:**", "**来源：**") + "\n" + links
                yield "", history
        except RetrievalError as exc:
            raise gr.Error(
                pick(lang, f"{exc} Or untick the retrieval box.", f"{exc} 或取消勾选检索选项。")
            ) from exc
        except (ChatError, WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc

    def on_project(project: str):
        try:
            return gr.update(value=has_index(get_project(project)))
        except WorkspaceError:
            return gr.update(value=False)

    def on_stop(loaded):
        if loaded is not None:
            loaded.stop_event.set()

    def on_compare(text, sys_prompt, temp, tp, mx, rp, loaded, lang):
        loaded = require_model(loaded, lang)
        if loaded.adapter is None:
            raise gr.Error(pick(lang, "Compare needs a fine-tuned checkpoint.", "对比需要加载微调检查点。"))
        try:
            messages, _ = ask_messages([], text, sys_prompt or "")
            params = params_of(temp, tp, mx, rp)
            loaded.stop_event.clear()
            answers = ["", ""]
            for side, use_adapter in ((0, False), (1, True)):
                for piece in stream_reply(
                    loaded, messages, params, loaded.stop_event, use_adapter=use_adapter
                ):
                    answers[side] += piece
                    yield answers[0], answers[1]
        except ChatError as exc:
            raise gr.Error(str(exc)) from exc

    def on_export(project, run_id, ckpt, only_base, base_text, out_text, lang, progress=gr.Progress()):
        if only_base:
            raise gr.Error(pick(lang, "Export needs a fine-tuned checkpoint.", "导出需要选择微调检查点。"))
        adapter = selected_adapter(project, run_id, ckpt, lang)
        base = typed_path(base_text)
        out = typed_path(out_text) or default_export_dir(get_project(project).root, run_id, ckpt)
        progress(0.1, desc=pick(lang, "Exporting…", "正在导出…"))
        try:
            result = export_model(adapter, out, base)
        except (ChatError, ExportError, OSError) as exc:
            raise gr.Error(str(exc)) from exc
        if result.kind == "merged":
            return pick(
                lang,
                f"**Merged model saved** to `{result.path}`.",
                f"**已保存合并后的模型**：`{result.path}`。",
            )
        return pick(
            lang,
            f"**P-tuning v2 cannot be merged** into the model. The adapter and its base reference were "
            f"copied to `{result.path}` (see EXPORT.md there).",
            f"**P-tuning v2 无法合并**进模型。已将适配器及其基座模型信息复制到 `{result.path}`（见其中的 EXPORT.md）。",
        )

    refresh_btn.click(on_refresh, [ctx.project, run], run, show_progress="hidden")
    ctx.project.change(on_refresh, [ctx.project, run], run, show_progress="hidden")
    run.change(on_run, [ctx.project, run], checkpoint, show_progress="hidden")
    load_btn.click(
        on_load,
        [ctx.project, run, checkpoint, base_only, base_path, loaded_state, ctx.lang],
        [loaded_state, status],
    )
    unload_btn.click(on_unload, [loaded_state, ctx.lang], [loaded_state, status])
    ctx.project.change(on_project, ctx.project, retrieve, show_progress="hidden")
    chat_inputs = [
        question,
        chatbot,
        system,
        temperature,
        top_p,
        max_new,
        rep,
        retrieve,
        loaded_state,
        ctx.project,
        ctx.lang,
    ]
    send_btn.click(on_send, chat_inputs, [question, chatbot])
    question.submit(on_send, chat_inputs, [question, chatbot])
    stop_btn.click(on_stop, loaded_state, None, queue=False, show_progress="hidden")
    clear_btn.click(lambda: ([], ""), None, [chatbot, question], queue=False, show_progress="hidden")
    cmp_btn.click(
        on_compare,
        [cmp_question, system, temperature, top_p, max_new, rep, loaded_state, ctx.lang],
        [cmp_base, cmp_tuned],
    )
    export_btn.click(
        on_export, [ctx.project, run, checkpoint, base_only, base_path, export_dir, ctx.lang], export_status
    )
