"""Build one UI tab outside the app and get its event handlers by name, for tests that call them directly."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest


def tab_handlers(module_name: str, data_dir: Path | None = None) -> dict:
    """`build_tab` of `module_name` (e.g. "ui_qa") in a bare gr.Blocks with English texts and project "p".

    With `data_dir`, the workspace points there while the tab is built; handlers look the workspace
    up when called, so a test's own `workspace` fixture applies to the calls.
    """
    import gradio as gr

    import blocks.workspace as ws
    from ui_common import Bilingual, UIContext

    texts = Bilingual("en")
    with pytest.MonkeyPatch.context() as mp:
        if data_dir is not None:
            mp.setattr(ws, "DATA_DIR", data_dir)
        with gr.Blocks() as demo:
            lang = gr.State("en")
            texts.lang_state = lang
            picker = gr.Dropdown(choices=["p"], value="p", allow_custom_value=True)
            importlib.import_module(module_name).build_tab(UIContext(texts, picker, lang, default_model=""))
    return {f.name: f.fn for f in demo.fns.values()}
