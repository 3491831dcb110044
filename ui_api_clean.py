"""UI tab: Clean pages and generate QA pairs with a hosted model."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 4, "Clean pages and generate QA pairs with a hosted model", "用在线大模型清洗网页并生成问答对")
