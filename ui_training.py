"""UI tab: Train in the background with a live loss curve."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 6, "Train in the background with a live loss curve", "后台训练并实时显示损失曲线")
