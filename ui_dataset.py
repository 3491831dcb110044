"""UI tab: Build train/dev/test chat datasets."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 5, "Build train/dev/test chat datasets", "构建训练/验证/测试数据集")
