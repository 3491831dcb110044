"""UI tab: Clean pages with a local model."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 4, "Clean pages with a local model", "用本地模型清洗网页")
