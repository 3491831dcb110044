"""Shared UI plumbing: the bilingual text switch and the context every tab receives.

Tabs write `label=ctx.L("Start URL", "起始网址")`; after the whole page is built,
`Bilingual.bind` finds every component showing one of those strings and wires the
language switch to swap them. No keys, no registry of components to maintain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

LANGS = {"en": "English", "zh": "中文"}
_TEXT_ATTRS = ("label", "info", "placeholder", "value")


class Bilingual:
    """Returns text in the start language and remembers its translation for the switch."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang if lang in LANGS else "en"
        self.pairs: dict[str, tuple[str, str]] = {}

    def __call__(self, en: str, zh: str) -> str:
        shown = zh if self.lang == "zh" else en
        self.pairs[shown] = (en, zh)
        return shown

    def pick(self, lang: str, en: str, zh: str) -> str:
        """Text for a message built at run time in the session's language."""
        return zh if lang == "zh" else en

    def bind(self, blocks: gr.Blocks, switch: gr.Radio) -> None:
        """Wire `switch` so choosing a language rewrites every registered string on the page."""
        targets: list[tuple[gr.components.Component, dict[str, tuple[str, str]]]] = []
        for block in blocks.blocks.values():
            if block is switch:
                continue
            found = {}
            for attr in _TEXT_ATTRS:
                text = getattr(block, attr, None)
                if isinstance(text, str) and text in self.pairs:
                    if attr == "value" and not isinstance(block, (gr.Markdown, gr.Button, gr.HTML)):
                        continue  # never overwrite a user's input
                    found[attr] = self.pairs[text]
            if found:
                targets.append((block, found))

        def switch_language(choice: str):
            lang = "zh" if choice == LANGS["zh"] else "en"
            updates = []
            for _block, found in targets:
                kwargs = {attr: (pair[1] if lang == "zh" else pair[0]) for attr, pair in found.items()}
                updates.append(gr.update(**kwargs))
            return [lang, *updates]

        switch.change(
            switch_language,
            inputs=switch,
            outputs=[self.lang_state, *[b for b, _ in targets]],
            show_progress="hidden",
        )

    lang_state: gr.State


@dataclass
class UIContext:
    """What every tab builder gets: the project picker, text helper and launch settings."""

    L: Bilingual
    project: gr.Dropdown
    lang: gr.State
    default_model: str
    model_roots: list[str] = field(default_factory=list)
    exposed: bool = False  # bound to a non-loopback address
