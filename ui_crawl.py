"""UI tab: Crawl a campus site into clean page texts (calls blocks.crawl)."""

from __future__ import annotations

import gradio as gr

from blocks.crawl import (
    CrawlError,
    CrawlOptions,
    crawl_site,
    origin_key,
    read_manifest,
    read_skipped,
    request_stop,
)
from blocks.workspace import WorkspaceError, get_project
from ui_common import UIContext

TABLE_HEADERS = ["id", "title", "url", "kind", "status", "chars"]


def manifest_table(project: str) -> list[list]:
    """Rows of the saved-pages table for a project (a damaged row shows blanks, never an error)."""
    try:
        crawl_dir = get_project(project).crawl_dir
    except WorkspaceError:
        return []
    rows = []
    for doc in read_manifest(crawl_dir):
        values = [doc.get(key, "") for key in TABLE_HEADERS]
        rows.append([v if isinstance(v, int | float | str) else "" if v is None else str(v) for v in values])
    return rows


def progress_markdown(ctx: UIContext, lang: str, progress, skipped: list[dict] | None = None) -> str:
    """Counters, reasons and the latest event as Markdown in the session's language."""
    pick = ctx.L.pick
    lines = [
        pick(lang, "**{status}** · fetched {f} · saved {s} (new {n}, changed {c}, unchanged {u}) · skipped {k} · queued {q}",
             "**{status}** · 已抓取 {f} · 已保存 {s}（新 {n}，变更 {c}，未变 {u}）· 跳过 {k} · 待抓取 {q}").format(
            status=progress.status, f=progress.fetched, s=progress.saved, n=progress.new, c=progress.changed,
            u=progress.unchanged, k=progress.skipped, q=progress.queued),
    ]  # fmt: skip
    if progress.reasons:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(progress.reasons.items(), key=lambda kv: -kv[1]))
        lines.append(pick(lang, "Not saved / not followed: ", "未保存/未跟进：") + reasons)
    if progress.last:
        lines.append(f"`{progress.last}`")
    text = "\n\n".join(lines)
    if skipped:
        heading = pick(lang, "Not saved (first 15):", "未保存的页面（前 15 个）：")
        text += "\n\n" + heading + "\n" + "\n".join(f"- {s['reason']}: {s['url']}" for s in skipped[:15])
    return text


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    L = ctx.L
    gr.Markdown(
        L(
            "**Crawl only sites you are allowed to.** Ask the site owner (usually the campus IT office) "
            "for permission first. The crawler obeys robots.txt, waits between requests and names itself "
            "in its User-Agent.",
            "**只爬取你有权爬取的网站。** 请先征得网站管理方（通常是学校网络中心）的同意。"
            "爬虫遵守 robots.txt、请求之间会等待，并在 User-Agent 中标明身份。",
        )
    )
    demo_state = gr.State(None)  # the DemoSite this session started (loopback server)
    with gr.Row():
        url = gr.Textbox(label=L("Start URL", "起始网址"), placeholder="https://www.example.edu.cn/", scale=4)
        demo_btn = gr.Button(L("Try the demo site", "试用演示网站"), scale=1)
    with gr.Row():
        depth = gr.Number(value=3, precision=0, minimum=0, label=L("Max depth", "最大深度"))
        pages = gr.Number(value=200, precision=0, minimum=1, label=L("Max pages", "最多页面数"))
        delay = gr.Number(value=1.0, minimum=0, label=L("Delay between requests (s)", "请求间隔（秒）"))
        concurrency = gr.Slider(1, 8, value=2, step=1, label=L("Concurrency", "并发数"))
        attachments = gr.Checkbox(value=True, label=L("Include PDF/DOCX attachments", "包含 PDF/DOCX 附件"))
    with gr.Row():
        start_btn = gr.Button(L("Start crawl", "开始爬取"), variant="primary")
        stop_btn = gr.Button(L("Stop", "停止"), variant="stop")
    with gr.Row():
        build_btn = gr.Button(
            L("Build my chatbot (one click: crawl → QA → train)", "一键生成聊天机器人（爬取 → 问答 → 训练）"),
            variant="primary",
        )
        build_stop_btn = gr.Button(L("Stop building", "停止生成"), variant="stop")
    pipeline_md = gr.Markdown()
    status = gr.Markdown(L("Not started.", "尚未开始。"))
    table = gr.Dataframe(
        headers=TABLE_HEADERS, value=[], label=L("Saved pages", "已保存的页面"), interactive=False, wrap=True
    )

    def on_demo(site, lang: str):
        from blocks.demo_site import start_demo_site

        if site is None:
            try:
                site = start_demo_site(host="127.0.0.1", port=0)
            except OSError as exc:
                raise gr.Error(
                    ctx.L.pick(lang, f"Cannot start the demo site: {exc}", f"无法启动演示网站：{exc}")
                ) from exc
        return site.url + "/index.htm", 0.0, site

    def on_start(
        project, start_url, max_depth, max_pages, delay_s, conc, attach, site, lang, progress=gr.Progress()
    ):
        try:
            crawl_dir = get_project(project).crawl_dir
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc
        allowed = ()
        if site is not None:
            allowed = (origin_key(site.url),)
        options = CrawlOptions(
            max_depth=int(max_depth or 0),
            max_pages=int(max_pages or 1),
            delay=float(delay_s if delay_s is not None else 1.0),
            concurrency=int(conc),
            include_attachments=bool(attach),
            allow_private=not ctx.exposed,
            allowed_origins=allowed,
        )
        try:
            for state in crawl_site(start_url, crawl_dir, options):
                total = max(1, min(options.max_pages, state.fetched + state.queued))
                progress(state.fetched / total, desc=state.last[:80])
                if state.finished:
                    break
                yield progress_markdown(ctx, lang, state), gr.skip()
        except CrawlError as exc:
            raise gr.Error(str(exc)) from exc
        yield progress_markdown(ctx, lang, state, read_skipped(crawl_dir)), manifest_table(project)

    def on_stop(project, lang):
        try:
            request_stop(get_project(project).crawl_dir)
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc
        gr.Info(ctx.L.pick(lang, "Stopping after the pages in flight…", "正在停止，等待进行中的页面完成…"))

    def on_build(project, start_url, max_depth, max_pages, delay_s, site, lang, progress=gr.Progress()):
        from blocks.pipeline import PipelineError, PipelineSettings, run_pipeline, stop_flag

        if not (start_url or "").strip():
            raise gr.Error(
                ctx.L.pick(
                    lang, "Enter a start URL (or try the demo site).", "请输入起始网址（或试用演示网站）。"
                )
            )
        try:
            proj = get_project(project)
        except WorkspaceError as exc:
            raise gr.Error(str(exc)) from exc
        flag = stop_flag(proj)
        flag.clear()
        settings = PipelineSettings(
            start_url,
            max_pages=int(max_pages or 1),
            max_depth=int(max_depth or 0),
            delay=float(delay_s if delay_s is not None else 1.0),
            allow_private=not ctx.exposed,
            allowed_origins=(origin_key(site.url),) if site is not None else (),
        )
        try:
            for s in run_pipeline(proj, settings, flag.is_set):
                progress(s.fraction, desc=f"{s.stage}: {s.message}"[:100])
                text = "\n".join(f"- **{k}**: {v}" for k, v in s.lines.items())
                if s.done:
                    text += "\n\n" + ctx.L.pick(
                        lang,
                        "**Ready.** Open the Chat tab, press Refresh list, pick the `pipeline-…` run and Load.",
                        "**完成。** 打开聊天页，点“刷新列表”，选择 `pipeline-…` 运行并加载。",
                    )
                elif s.stopped:
                    text += "\n\n" + ctx.L.pick(
                        lang, "Stopped: press Build again to go on.", "已停止：再次点击即可继续。"
                    )
                yield text
        except PipelineError as exc:
            raise gr.Error(str(exc)) from exc

    def on_build_stop(project, lang):
        from blocks.pipeline import stop_flag

        stop_flag(get_project(project)).set()
        request_stop(get_project(project).crawl_dir)
        gr.Info(ctx.L.pick(lang, "Stopping the current stage…", "正在停止当前步骤…"))

    build_btn.click(
        on_build, inputs=[ctx.project, url, depth, pages, delay, demo_state, ctx.lang], outputs=pipeline_md
    )
    build_stop_btn.click(on_build_stop, inputs=[ctx.project, ctx.lang], outputs=None)
    demo_btn.click(on_demo, inputs=[demo_state, ctx.lang], outputs=[url, delay, demo_state])
    start_btn.click(
        on_start,
        inputs=[ctx.project, url, depth, pages, delay, concurrency, attachments, demo_state, ctx.lang],
        outputs=[status, table],
    )
    stop_btn.click(on_stop, inputs=[ctx.project, ctx.lang], outputs=None)
    ctx.project.change(manifest_table, inputs=ctx.project, outputs=table)
