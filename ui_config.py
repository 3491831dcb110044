"""UI tab: Write a validated training config."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 5, "Write a validated training config", "生成经过校验的训练配置")
