"""UI tab: Crawl a campus site into clean page texts."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 3, "Crawl a campus site into clean page texts", "爬取校园网站并提取正文")
