"""UI tab: Chat with the fine-tuned model."""

from __future__ import annotations

from ui_common import UIContext, placeholder_tab


def build_tab(ctx: UIContext) -> None:
    """Build the tab's components inside the current gr.Tab."""
    placeholder_tab(ctx, 7, "Chat with the fine-tuned model", "与微调后的模型对话")
