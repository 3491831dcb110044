"""UI tab: build train/dev/test chat datasets from the project's QA pairs (or imported files)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from blocks import dataset as ds
from blocks.models import REPO_ROOT
from blocks.workspace import WorkspaceError, confine_path, get_project
from ui_common import UIContext

DROP_REASONS = {
    "malformed": ("malformed line (see problems)", "格式错误的行（见下方问题）"),
    "empty_question": ("empty question", "问题为空"),
    "empty_answer": ("empty answer", "答案为空"),
    "question_too_long": ("question too long", "问题过长"),
    "answer_too_long": ("answer too long", "答案过长"),
    "duplicate_exact": ("exact duplicate", "完全重复"),
    "duplicate_normalised": (
        "duplicate after normalising case/width/punctuation",
        "规范化后重复（大小写/全半角/标点）",
    ),
    "same_question_other_page": ("same question already from another page", "同一问题已出现在其他页面"),
}
SPLIT_NAMES = {"train": ("train", "训练集"), "dev": ("dev", "验证集"), "test": ("test", "测试集")}


def shown_path(path: Path) -> str:
    """A path relative to the repository when it lies inside it (shorter to read and type)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def format_stats(stats: dict, lang: str) -> str:
    """Markdown summary of stats.json: splits, drops by reason, token lengths, sources, problems."""

    def t(en: str, zh: str) -> str:
        return zh if lang == "zh" else en

    lines = [
        t(
            f"**Read {stats['read']} entries, kept {stats['kept']} pairs.**",
            f"**读取 {stats['read']} 条，保留 {stats['kept']} 个问答对。**",
        ),
        "",
    ]
    tokens = stats.get("tokens")
    head = t("| split | records | source pages | truncated |", "| 划分 | 记录数 | 来源页面数 | 将被截断 |")
    lines += [head, "|---|---:|---:|---:|"]
    for split, row in stats["splits"].items():
        cut = tokens["truncated"][split]["any"] if tokens else "–"
        lines.append(f"| {t(*SPLIT_NAMES[split])} | {row['records']} | {row['groups']} | {cut} |")
    lines.append("")
    rw = stats.get("rewordings") or {}
    if rw.get("facts"):
        kinds = stats.get("records_by_kind", {}).get("train", {})
        lines.append(
            t(
                f"Train: {rw['facts']} facts, rewordings per fact min {rw['min']} / mean {rw['mean']} / max "
                f"{rw['max']} ({kinds.get('reworded', 0)} reworded, {kinds.get('raft', 0)} retrieval-aware "
                f"records; retrieval index: {stats.get('retrieval')}).",
                f"训练集：{rw['facts']} 个事实，每个事实的改写数 最少 {rw['min']} / 平均 {rw['mean']} / 最多 "
                f"{rw['max']}（改写 {kinds.get('reworded', 0)} 条，检索增强 {kinds.get('raft', 0)} 条；"
                f"检索索引：{stats.get('retrieval')}）。",
            )
        )
        lines.append("")
    if stats["drops"]:
        lines += [t("| dropped because | pairs |", "| 丢弃原因 | 数量 |"), "|---|---:|"]
        for reason, count in stats["drops"].items():
            lines.append(f"| {t(*DROP_REASONS.get(reason, (reason, reason)))} | {count} |")
    else:
        lines.append(t("Nothing was dropped.", "没有丢弃任何问答对。"))
    lines.append("")
    if tokens:
        lines += [
            t(
                f"Tokens under `{stats['model']}` (truncation limits: input {tokens['max_input_length']}, "
                f"output {tokens['max_output_length']}):",
                f"按 `{stats['model']}` 的分词器统计 token（截断上限：输入 {tokens['max_input_length']}，"
                f"输出 {tokens['max_output_length']}）：",
            ),
            "",
            t(
                "| part | min | mean | p50 | p90 | p99 | max |",
                "| 部分 | 最小 | 平均 | p50 | p90 | p99 | 最大 |",
            ),
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for part, en, zh in (
            ("prompt", "prompt", "提示"),
            ("answer", "answer", "回答"),
            ("total", "total", "合计"),
        ):
            d = tokens[part]
            lines.append(
                f"| {t(en, zh)} | {d['min']} | {d['mean']} | {d['p50']} | {d['p90']} | {d['p99']} | {d['max']} |"
            )
        lines.append("")
    sources = list(stats["pairs_per_source"].items())
    lines.append(
        t(
            f"Pairs per source ({len(sources)} sources, top 10):",
            f"各来源的问答对数（共 {len(sources)} 个来源，前 10）：",
        )
    )
    lines += [f"- {n} · {src}" for src, n in sources[:10]]
    if stats["problem_count"]:
        lines += [
            "",
            t(f"**Problems ({stats['problem_count']}):**", f"**问题（{stats['problem_count']} 个）：**"),
        ]
        lines += [f"- `{p}`" for p in stats["problems"][:20]]
    lines += [
        "",
        t(f"Written to `{stats.get('dataset_dir', '')}`.", f"已写入 `{stats.get('dataset_dir', '')}`。"),
    ]
    return "\n".join(lines)


def format_preview(preview: list[str], lang: str) -> str:
    """The first training records as the model's chat template renders them."""
    if not preview:
        return ""
    title = (
        "**训练时模型看到的前几条记录：**"
        if lang == "zh"
        else "**The first records exactly as training sees them:**"
    )
    blocks = [f"```text\n{text.rstrip()}\n```" for text in preview]
    return "\n\n".join([title, *blocks])


def whole_number(value, what: str) -> int:
    """An integer from a Number field; an emptied field gets a message instead of a TypeError."""
    if value is None or value == "":
        raise ds.DatasetError(f"{what} is empty: enter a whole number.")
    if float(value) != int(value):
        raise ds.DatasetError(f"{what} must be a whole number, got {value}.")
    return int(value)


def default_input(project_name: str) -> str:
    """The Inputs box's default: the project's qa.jsonl."""
    return shown_path(get_project(project_name).qa_file)


def load_existing(project_name: str, lang: str) -> tuple[str, str]:
    """Default input path and, if a dataset was built before, its summary."""
    project = get_project(project_name)
    stats_file = project.dataset_dir / "stats.json"
    summary = ""
    if stats_file.is_file():
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        summary = format_stats({**stats, "dataset_dir": shown_path(project.dataset_dir)}, lang)
    return default_input(project_name), summary


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    L = ctx.L
    gr.Markdown(
        L(
            "Turn the QA pairs into **train / dev / test** chat files. Pairs from one source page always "
            "land in the same split, so the test set measures questions the model never trained on. "
            "Rebuilding replaces the files; the same seed gives the same split.",
            "把问答对转换为**训练 / 验证 / 测试**对话数据。同一来源页面的问答对总在同一划分中，"
            "因此测试集考的是模型从未训练过的问题。重新构建会替换文件；相同的随机种子得到相同的划分。",
        )
    )
    with gr.Row():
        inputs = gr.Textbox(
            value=default_input(ctx.project.value or "demo"),
            label=L("Input files (one per line)", "输入文件（每行一个）"),
            info=L(
                "Default: the project's qa.jsonl. Also accepts .jsonl/.json with question/answer keys, "
                "the old Q：/A： .txt files, or a folder of them.",
                "默认为项目的 qa.jsonl。也可填写含 question/answer 字段的 .jsonl/.json、旧版 Q：/A： 格式的 .txt 文件或其所在文件夹。",
            ),
            lines=2,
            scale=3,
        )
        uploads = gr.File(
            label=L("Or import files", "或导入文件"),
            file_count="multiple",
            file_types=[".jsonl", ".json", ".txt", ".md"],
            type="filepath",
            scale=2,
        )
    with gr.Accordion(L("Options", "选项"), open=False):
        with gr.Row():
            split = gr.Textbox(value="8:1:1", label=L("Split train:dev:test", "划分比例 训练:验证:测试"))
            seed = gr.Number(value=42, precision=0, label=L("Seed", "随机种子"))
            cite = gr.Checkbox(
                value=False,
                label=L('End answers with "Source: <url>"', "答案末尾附上“Source: <网址>”"),
            )
        with gr.Row():
            rewordings = gr.Number(
                value=3,
                precision=0,
                minimum=0,
                maximum=10,
                label=L("Rewordings per question (train)", "每个问题的改写数（训练集）"),
            )
            retrieval = gr.Checkbox(
                value=True,
                label=L(
                    "Retrieval-aware records: questions behind the site's passages (RAFT)",
                    "检索增强样本：问题前附上网站检索到的段落（RAFT）",
                ),
            )
        system = gr.Textbox(
            value="",
            lines=2,
            label=L("System prompt (optional)", "系统提示词（可选）"),
            placeholder=L(
                "e.g. You are the assistant of Eastlake University.", "例如：你是东湖大学的智能助手。"
            ),
        )
        with gr.Row():
            model = gr.Textbox(
                value=ctx.default_model,
                label=L("Model (its tokenizer and chat template)", "模型（使用其分词器与对话模板）"),
                scale=3,
            )
            max_in = gr.Number(value=512, precision=0, label=L("Max input tokens", "最大输入 token 数"))
            max_out = gr.Number(value=512, precision=0, label=L("Max output tokens", "最大输出 token 数"))
        with gr.Row():
            max_q = gr.Number(
                value=1000, precision=0, label=L("Drop questions longer than (chars)", "问题超过此字数则丢弃")
            )
            max_a = gr.Number(
                value=4000, precision=0, label=L("Drop answers longer than (chars)", "答案超过此字数则丢弃")
            )
    with gr.Row():
        build = gr.Button(L("Build dataset", "构建数据集"), variant="primary")
        check = gr.Button(L("Check existing dataset", "检查已有数据集"))
    summary = gr.Markdown()
    preview = gr.Markdown()
    with gr.Accordion(L("stats.json", "stats.json"), open=False):
        raw = gr.JSON()

    def on_build(
        project_name, lang, paths_text, files, split_text, seed_value, system_text, cite_on,
        model_path, max_input, max_output, max_question, max_answer, n_rewordings, use_retrieval,
        progress=gr.Progress(),
    ):  # fmt: skip
        try:
            project = get_project(project_name)
            paths = [confine_path(line) for line in (paths_text or "").splitlines() if line.strip()]
            if files:
                # The box still shows the default qa.jsonl; with uploads and no QA stage run yet, skip it.
                paths = [p for p in paths if p.exists() or p != project.qa_file.resolve()]
                paths += ds.import_files(project.root, [Path(f) for f in files])
            options = ds.DatasetOptions(
                ratios=ds.parse_split_ratios(split_text),
                seed=whole_number(seed_value, "Seed"),
                system_prompt=system_text or "",
                cite_source=bool(cite_on),
                max_question_chars=whole_number(max_question, "Drop questions longer than"),
                max_answer_chars=whole_number(max_answer, "Drop answers longer than"),
                max_input_length=whole_number(max_input, "Max input tokens"),
                max_output_length=whole_number(max_output, "Max output tokens"),
                rewordings=whole_number(n_rewordings, "Rewordings per question"),
                retrieval=bool(use_retrieval),
            )
            chosen = confine_path(model_path) if (model_path or "").strip() else None
            report = ds.build_dataset(
                project.root,
                paths or None,
                options,
                chosen,
                on_progress=lambda frac, what: progress(frac, desc=what),
            )
        except (ds.DatasetError, WorkspaceError, OSError) as exc:
            raise gr.Error(str(exc)) from exc
        if report.stats["problem_count"]:
            gr.Warning(
                L.pick(
                    lang,
                    f"{report.stats['problem_count']} malformed entries were skipped: see Problems.",
                    f"跳过了 {report.stats['problem_count']} 条格式错误的记录，详见“问题”。",
                )
            )
        shown = {**report.stats, "dataset_dir": shown_path(report.dataset_dir)}
        return format_stats(shown, lang), format_preview(report.preview, lang), report.stats

    def on_check(project_name, lang):
        try:
            counts = ds.validate_dataset(get_project(project_name).dataset_dir)
        except ds.DatasetValidationError as exc:
            gr.Warning(L.pick(lang, "The dataset has problems.", "数据集存在问题。"))
            listed = "\n".join(f"- `{p}`" for p in exc.problems[:30])
            return L.pick(lang, "**Problems:**\n", "**问题：**\n") + listed
        except (ds.DatasetError, WorkspaceError) as exc:
            raise gr.Error(str(exc)) from exc
        shown = ", ".join(f"{L.pick(lang, *SPLIT_NAMES[s])} {n}" for s, n in counts.items())
        return L.pick(lang, f"The dataset is valid: {shown}.", f"数据集有效：{shown}。")

    def on_project(project_name, lang):
        try:
            return load_existing(project_name, lang)
        except (WorkspaceError, OSError, json.JSONDecodeError) as exc:
            raise gr.Error(str(exc)) from exc

    build.click(
        on_build,
        inputs=[
            ctx.project,
            ctx.lang,
            inputs,
            uploads,
            split,
            seed,
            system,
            cite,
            model,
            max_in,
            max_out,
            max_q,
            max_a,
            rewordings,
            retrieval,
        ],
        outputs=[summary, preview, raw],
    )
    check.click(on_check, inputs=[ctx.project, ctx.lang], outputs=summary)
    ctx.project.change(
        on_project, inputs=[ctx.project, ctx.lang], outputs=[inputs, summary], show_progress="hidden"
    )
