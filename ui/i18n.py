"""Chinese and English for every label and message; the page switches without a reload.

Every component whose text depends on the language is registered with ``Labels`` when it is built;
switching the language returns one ``gr.update`` per registered component. Messages written by
callbacks take the language as an input and call ``t``.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.strings import STRINGS

LANGUAGES = {"en": "English", "zh": "中文"}


def t(key: str, lang: str, **values: Any) -> str:
    """The text of ``key`` in ``lang`` (English when it has no translation), with ``values`` filled in."""
    en, zh = STRINGS[key]
    text = zh if lang == "zh" and zh else en
    return text.format(**values) if values else text


def language_from_header(accept_language: str) -> str:
    """``zh`` when the browser prefers Chinese to English (``Accept-Language``), else ``en``."""
    best, best_q = "en", -1.0
    for position, part in enumerate(accept_language.split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-")[0]
        score = q - position * 1e-3  # earlier wins a tie, as browsers list by preference
        if primary in LANGUAGES and score > best_q:
            best, best_q = primary, score
    return best


class Labels:
    """Components whose label, info, placeholder, value or choices are translated."""

    def __init__(self, lang: str = "en"):
        self.lang = lang
        self._items: list[tuple[gr.components.Component, dict[str, Any]]] = []

    def __call__(self, component_class, *args: Any, **props: Any):
        """Build ``component_class`` with each ``*_key`` prop translated, and remember it.

        ``label_key="data.name"`` gives ``label=t("data.name")``; ``choices_key=[("k", value), ...]`` gives
        translated (label, value) choices.
        """
        keys = {name[:-4]: props.pop(name) for name in list(props) if name.endswith("_key")}
        component = component_class(*args, **props, **self._texts(keys, self.lang))
        self._items.append((component, keys))
        return component

    @staticmethod
    def _texts(keys: dict[str, Any], lang: str) -> dict[str, Any]:
        texts = {}
        for prop, key in keys.items():
            if prop == "choices":
                texts[prop] = [(t(k, lang), value) for k, value in key]
            else:
                texts[prop] = t(key, lang)
        return texts

    @property
    def components(self) -> list:
        return [component for component, _ in self._items]

    def updates(self, lang: str) -> list:
        return [gr.update(**self._texts(keys, lang)) for _, keys in self._items]
