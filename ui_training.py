"""UI tab: Train in the background with a live loss curve, stop, resume and evaluate.

Everything shown comes from the run folder on disk (polled by a gr.Timer), so a refreshed page
or a restarted app re-attaches to a running job. Handlers call one function of blocks.training
(or finetune.evaluate) and turn its exceptions into gr.Error.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pandas as pd

from blocks import training as tr
from blocks import workspace as ws
from blocks.config import gpu_count
from ui_common import UIContext

POLL_S = 2.0
STATUS_TEXT = {
    "starting": ("starting", "启动中"),
    "running": ("running", "训练中"),
    "done": ("done", "已完成"),
    "stopped": ("stopped", "已停止"),
    "failed": ("failed", "失败"),
    "crashed": ("crashed (exited without an end event)", "异常退出（无结束事件）"),
}


def empty_watch() -> dict:
    """Per-session view state: the watched run, how far progress.jsonl was read, its events."""
    return {"run_id": "", "offset": 0, "events": [], "status": ""}


def format_duration(seconds: float | None) -> str:
    """'1h 02m', '3m 05s', '42s' or '?'."""
    if seconds is None:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def render_status(status: tr.RunStatus | None, lang: str) -> str:
    """Markdown describing the watched run, with the failure hint where there is one."""
    if status is None:
        return ""
    en, zh = STATUS_TEXT.get(status.status, (status.status, status.status))
    total = f" / {status.total_steps}" if status.total_steps else ""
    parts = [f"**{status.run_id}** · {zh if lang == 'zh' else en} · step {status.step}{total}"]
    if status.loss is not None:
        parts.append(f"loss {status.loss:.4f}")
    if status.eval_loss is not None:
        parts.append(f"eval loss {status.eval_loss:.4f}")
    if status.gpu_gib is not None:
        parts.append(("显存峰值 " if lang == "zh" else "GPU memory peak ") + f"{status.gpu_gib:.1f} GiB")
    if status.status == "running":
        parts.append(("剩余约 " if lang == "zh" else "ETA ") + format_duration(status.eta_s))
    text = " · ".join(parts)
    if status.error:
        text += "\n\n" + ("错误：" if lang == "zh" else "Error: ") + status.error
    if status.oom:
        text += "\n\n" + (
            "**显存/内存不足**：请减小 batch_size 或 max_input_length/max_output_length，"
            "开启梯度检查点，或改用 QLoRA。"
            if lang == "zh"
            else "**Out of memory**: lower batch_size or max_input_length/max_output_length, "
            "turn on gradient checkpointing, or use QLoRA."
        )
    if status.status in ("stopped", "crashed") and status.checkpoints:
        text += "\n\n" + (
            f"可从检查点 {status.checkpoints[-1]} 继续训练（点击“继续训练”）。"
            if lang == "zh"
            else f"Resume continues from checkpoint {status.checkpoints[-1]}."
        )
    return text


def render_bar(status: tr.RunStatus | None) -> str:
    """An HTML progress bar for the watched run."""
    if status is None or not status.total_steps:
        fraction = 1.0 if status is not None and status.status == "done" else 0.0
    else:
        fraction = min(1.0, status.step / status.total_steps)
    color = {"failed": "#d9534f", "crashed": "#d9534f", "stopped": "#f0ad4e"}.get(
        status.status if status else "", "#5cb85c"
    )
    return (
        '<div style="background:#eee;border-radius:4px;height:18px;width:100%">'
        f'<div style="background:{color};height:18px;border-radius:4px;width:{fraction * 100:.1f}%"></div>'
        f"</div><div style='font-size:12px'>{fraction * 100:.0f}%</div>"
    )


def loss_frame(events: list[dict], max_points: int = 1000) -> pd.DataFrame:
    """Train and eval loss against step, for gr.LinePlot (thinned to ~max_points per series)."""
    frame = pd.DataFrame(tr.loss_points(events), columns=["step", "loss", "series"])
    parts = []
    for _, group in frame.groupby("series", sort=False):
        every = -(-len(group) // max_points)  # a long run's plot stays light to send every 2 s
        parts.append(pd.concat([group.iloc[::every], group.iloc[-1:]]).drop_duplicates())
    return pd.concat(parts).sort_values("step") if parts else frame


def loss_figure(events: list[dict]):
    """A matplotlib figure of train and eval loss against step (an image: renders in a hidden tab too)."""
    from matplotlib.figure import Figure  # no pyplot: no global figure registry to leak into

    frame = loss_frame(events)
    fig = Figure(figsize=(9, 3.2), dpi=90, layout="tight")
    ax = fig.subplots()
    for name, color in (("train", "#1f77b4"), ("eval", "#ff7f0e")):
        part = frame[frame["series"] == name]
        if len(part):
            ax.plot(
                part["step"],
                part["loss"],
                marker="o" if len(part) < 30 else None,
                ms=3,
                color=color,
                label=name,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if len(frame):
        ax.legend(loc="upper right")
    return fig


def runs_table(project: str) -> pd.DataFrame:
    """The project's runs with status, newest first."""
    rows = [
        [s.run_id, s.status, s.step, s.total_steps or "", s.loss if s.loss is not None else "", s.has_adapter]
        for s in tr.list_runs(project)
    ]
    return pd.DataFrame(rows, columns=["run", "status", "step", "total", "loss", "adapter"])


def pick_run(project: str, current: str) -> str:
    """The run to watch: the current choice, else this project's running job, else the newest run."""
    runs_dir = ws.get_project(project).runs_dir
    if current and (runs_dir / current).is_dir():
        return current
    active = tr.active_run()
    if active is not None and Path(active.run_dir).parent == runs_dir:
        return active.run_id
    runs = (
        sorted((p.name for p in runs_dir.iterdir() if p.is_dir()), reverse=True) if runs_dir.is_dir() else []
    )
    return runs[0] if runs else ""


def poll(project: str, run_id: str, watch: dict, lang: str):
    """One timer tick: read new progress events and refresh status, bar, curve and log tail.

    Returns (watch, run dropdown, status, bar, plot, log tail, runs table); the dropdown and the
    table are only sent when the watched run or its status changed.
    """
    run_id = pick_run(project, run_id)
    if not run_id:
        return empty_watch(), gr.update(), "", render_bar(None), gr.update(), "", gr.update()
    run_update = gr.update()
    if watch.get("run_id") != run_id:
        watch = {**empty_watch(), "run_id": run_id}
        choices = [s.run_id for s in tr.list_runs(project)]
        run_update = gr.update(choices=choices, value=run_id)
    run_dir = ws.get_project(project).run_dir(run_id)
    events, offset = tr.read_progress(run_dir, watch["offset"])
    # Redraw only when something new arrived (or the watched run changed).
    plot = loss_figure(watch["events"] + events) if events or watch["offset"] == 0 else gr.update()
    status = tr.get_run_status(run_dir, watch["events"] + events)
    table = runs_table(project) if status.status != watch.get("status") else gr.update()
    watch = {"run_id": run_id, "offset": offset, "events": watch["events"] + events, "status": status.status}
    tail = tr.read_log_tail(run_dir, max_lines=30)
    return (
        watch,
        run_update,
        render_status(status, lang),
        render_bar(status),
        plot,
        tail,
        table,
    )


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    L = ctx.L
    gr.Markdown(
        L(
            "Pick a config (from the Config tab or a preset) and start. Training runs in the background: "
            "you can close or refresh this page and come back; the curve keeps updating.",
            "选择一个训练配置（来自“训练配置”页或预设）后开始。训练在后台运行：关闭或刷新页面后回来，曲线会继续更新。",
        )
    )
    with gr.Row():
        config = gr.Dropdown(
            choices=tr.list_config_files(ws.DEFAULT_PROJECT),
            label=L("Config", "训练配置"),
            allow_custom_value=False,
            scale=3,
        )
        gpus_here = gpu_count()
        gpus = gr.Number(
            value=1,
            precision=0,
            minimum=1,
            maximum=max(gpus_here, 1),
            label=L("GPUs", "GPU 数量"),
            info=L(
                "More than 1: one process per GPU (DDP); the effective batch grows with the GPU count.",
                "大于 1：每块 GPU 一个进程（DDP）；等效批量随 GPU 数增大。",
            ),
            visible=gpus_here > 1,  # one GPU or none: nothing to choose
            scale=1,
        )
        refresh = gr.Button(L("Refresh lists", "刷新列表"), scale=0)
        start = gr.Button(L("Start training", "开始训练"), variant="primary", scale=1)
    with gr.Row():
        run = gr.Dropdown(choices=[], label=L("Run", "训练任务"), allow_custom_value=False, scale=3)
        stop = gr.Button(L("Stop training", "停止训练"), variant="stop", scale=1)
        resume = gr.Button(L("Resume from last checkpoint", "从最新检查点继续"), scale=1)
        again = gr.Button(L("Start again from this adapter", "以此适配器重新开始"), scale=1)
    status_md = gr.Markdown()
    bar = gr.HTML(render_bar(None))
    plot = gr.Plot(label=L("Loss (train and eval) vs step", "损失曲线（训练/验证）"), format="png")
    log_tail = gr.Textbox(
        label=L("Log (train.log, last lines)", "日志（train.log 末尾）"), lines=10, max_lines=10
    )
    runs = gr.Dataframe(label=L("Runs", "训练任务列表"), interactive=False)
    with gr.Accordion(L("Evaluate on the test split", "在测试集上评估"), open=False):
        gr.Markdown(
            L(
                "Generates answers to the test questions with the tuned model and the base model, then scores "
                "ROUGE-1/2/L, BLEU-4 and key facts (numbers, dates, names, places) side by side.",
                "用微调模型和基座模型分别回答测试集问题，并排比较 ROUGE-1/2/L、BLEU-4 和关键事实（数字、日期、名称、地点）。",
            )
        )
        with gr.Row():
            limit = gr.Number(value=50, precision=0, minimum=1, label=L("Max test examples", "最多评估条数"))
            questions_path = gr.Textbox(
                label=L("Reworded questions (JSONL, optional)", "改写问题集（JSONL，可选）"),
                info=L(
                    "Questions worded as students ask them (question, answer, key_facts, source_url), never "
                    "trained on: scored base / tuned, with and without retrieval, and the cited page.",
                    "按学生的说法改写、未参与训练的问题（question、answer、key_facts、source_url）："
                    "分别评估基座/微调、有无检索，以及引用的页面是否正确。",
                ),
                scale=2,
            )
            evaluate = gr.Button(L("Evaluate", "开始评估"), variant="primary")
        eval_md = gr.Markdown()
    watch = gr.State(empty_watch())
    timer = gr.Timer(POLL_S)

    def on_refresh(project: str, current: str):
        try:
            choices = [s.run_id for s in tr.list_runs(project)]
            configs = tr.list_config_files(project)
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        current = current if current in choices else pick_run(project, "")
        return (
            gr.update(choices=configs),
            gr.update(choices=choices, value=current or None),
            runs_table(project),
        )

    def on_start(project: str, config_path: str, processes: float | None, lang: str):
        if not config_path:
            raise gr.Error(L.pick(lang, "Pick a config first.", "请先选择训练配置。"))
        try:
            status = tr.start_run(project, ws.confine_path(config_path), processes=processes or 1)
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(L.pick(lang, f"Started {status.run_id}.", f"已开始 {status.run_id}。"))
        return started(project, status.run_id)

    def started(project: str, run_id: str):
        choices = [s.run_id for s in tr.list_runs(project)]
        return (
            gr.update(choices=choices, value=run_id),
            {**empty_watch(), "run_id": run_id},
            runs_table(project),
        )

    def on_stop(project: str, run_id: str, lang: str, progress=gr.Progress()):
        if not run_id:
            raise gr.Error(L.pick(lang, "Pick a run first.", "请先选择训练任务。"))
        progress(0, desc=L.pick(lang, "Stopping (saving a checkpoint)...", "正在停止（保存检查点）……"))
        try:
            status = tr.stop_run(ws.get_project(project).run_dir(run_id))
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        return runs_table(project), render_status(status, lang)

    def on_resume(project: str, run_id: str, lang: str):
        if not run_id:
            raise gr.Error(L.pick(lang, "Pick a run first.", "请先选择训练任务。"))
        try:
            tr.resume_run(project, run_id)
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        return started(project, run_id)

    def on_again(project: str, run_id: str, lang: str):
        if not run_id:
            raise gr.Error(L.pick(lang, "Pick a run first.", "请先选择训练任务。"))
        try:
            status = tr.restart_from_adapter(project, run_id)
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(L.pick(lang, f"Started {status.run_id}.", f"已开始 {status.run_id}。"))
        return started(project, status.run_id)

    def on_evaluate(
        project: str, run_id: str, max_items: float | None, questions: str, lang: str, progress=gr.Progress()
    ):
        from finetune import evaluate as ev

        if not run_id:
            raise gr.Error(L.pick(lang, "Pick a run first.", "请先选择训练任务。"))

        def report(name: str, done: int, total: int) -> None:
            progress(done / total, desc=f"{name}: {done}/{total}")

        progress(0, desc=L.pick(lang, "Loading models...", "正在加载模型……"))
        try:
            run_dir = ws.get_project(project).run_dir(run_id)
            adapter = None
            if not (run_dir / "adapter" / "adapter_config.json").is_file():
                # A stopped run has no final adapter yet: its latest checkpoint is the best there is.
                steps = tr.list_checkpoints(run_dir)
                adapter = run_dir / f"checkpoint-{steps[-1]}" if steps else None
            limit_n = int(max_items) if max_items else None
            header = L.pick(lang, "Written to", "已写入")
            if (questions or "").strip():
                from blocks.chat import ChatError
                from blocks.index import RetrievalError

                qfile = ws.confine_path(questions)
                try:
                    items = ev.load_questions(qfile)[:limit_n]
                    result = ev.evaluate_questions(
                        adapter or run_dir / "adapter", items, ws.get_project(project), on_progress=report
                    )
                except (ChatError, RetrievalError) as exc:
                    raise gr.Error(str(exc)) from exc
                ev.write_reworded(run_dir, result, qfile)
                return f"```\n{ev.format_reworded(result['summary'])}\n```\n{header} `{run_dir / 'eval'}`"
            metrics = ev.evaluate_run(run_dir, adapter=adapter, limit=limit_n, on_progress=report)
        except (ev.EvaluationError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        return f"```\n{ev.format_metrics(metrics)}\n```\n{header} `{run_dir / 'eval'}` ({metrics['adapter']})"

    def on_tick(project: str, run_id: str, watch_state: dict, lang: str):
        try:
            return poll(project, run_id, watch_state, lang)
        except (tr.TrainingError, ws.WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc

    tick_outputs = [watch, run, status_md, bar, plot, log_tail, runs]
    refresh.click(on_refresh, [ctx.project, run], [config, run, runs])
    ctx.project.change(on_refresh, [ctx.project, run], [config, run, runs])
    start.click(on_start, [ctx.project, config, gpus, ctx.lang], [run, watch, runs])
    stop.click(on_stop, [ctx.project, run, ctx.lang], [runs, status_md])
    resume.click(on_resume, [ctx.project, run, ctx.lang], [run, watch, runs])
    again.click(on_again, [ctx.project, run, ctx.lang], [run, watch, runs])
    evaluate.click(on_evaluate, [ctx.project, run, limit, questions_path, ctx.lang], [eval_md])
    run.change(on_tick, [ctx.project, run, watch, ctx.lang], tick_outputs, show_progress="hidden")
    timer.tick(on_tick, [ctx.project, run, watch, ctx.lang], tick_outputs, show_progress="hidden")
