"""What a person sees when something goes wrong: a sentence to act on, and the details folded away.

Callbacks are wrapped by ``guarded`` so that no exception reaches Gradio (no frozen spinner, no bare
traceback): the wrapped callback leaves its other outputs as they were and writes the message into its
message output.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
import traceback
from typing import Any, Callable

import gradio as gr

from ui.i18n import t

log = logging.getLogger("tuner.app")

# Errors whose text is already a sentence for the user: shown without "something went wrong".
EXPECTED = ("DataError", "DataFormatError", "JobError", "ChatLoadError", "PublishError", "ModelNotFound",
            "StageError", "ValueError", "FileNotFoundError", "AccessDenied", "AdapterUploadError", "ManualSteps")


def server_paths() -> list[str]:
    """Folders of this machine that a visitor should not learn (longest first, so that the most specific
    one is replaced)."""
    import sys
    import tempfile
    from pathlib import Path

    from tuner import paths

    folders = {str(paths.home()), str(paths.cache()), str(Path(__file__).resolve().parent.parent), sys.prefix,
               sys.base_prefix, tempfile.gettempdir(), str(Path.home())}
    return sorted((f for f in folders if f and f != "/"), key=len, reverse=True)


def for_visitor(text: str) -> str:
    """``text`` with every server folder replaced by "…"."""
    for folder in server_paths():
        text = text.replace(folder, "…")
    return text


def ok(text: str) -> str:
    return f"✅ {text}"


def info(text: str) -> str:
    return f"ℹ️ {text}"


def error_text(error: BaseException, lang: str) -> str:
    name = type(error).__name__
    message = str(error) or name
    if name == "DataFormatError" and getattr(error, "errors", None):
        message = "\n".join(f"- `{e}`" for e in error.errors[:30])
    if name == "PublishError":
        detail = getattr(error, "detail", "")
        message = t(f"publish.error.{error.kind}", lang) + (f" ({detail})" if detail else "")
    head = f"❌ {message}" if name in EXPECTED else f"❌ {t('error.unexpected', lang)}: {message}"
    from ui.access_guard import current_caller

    if not current_caller().owner:  # a visitor: the sentence, without server paths or a traceback
        return for_visitor(head)
    details = html.escape("".join(traceback.format_exception(error)))
    return (f"{head}\n\n<details><summary>{t('error.details', lang)}</summary>\n\n<pre>{details}</pre>\n\n"
            "</details>")


def guarded(outputs: int, message: int, lang_arg: int | None = 0) -> Callable:
    """Wrap a callback (plain or generator) with ``outputs`` outputs, the ``message``-th being a Markdown.

    ``lang_arg`` is the position of the language among the callback's arguments (None: English).
    """

    def failure(args: tuple, error: BaseException) -> Any:
        log.error("callback failed", exc_info=error)
        lang = args[lang_arg] if lang_arg is not None and len(args) > lang_arg else "en"
        values = [gr.skip()] * outputs
        values[message] = error_text(error, lang)
        return values[0] if outputs == 1 else tuple(values)

    def decorate(callback: Callable) -> Callable:
        if inspect.isgeneratorfunction(callback):
            @functools.wraps(callback)
            def generator(*args: Any):
                try:
                    yield from callback(*args)
                except Exception as error:  # noqa: BLE001 - the boundary: every failure becomes a message
                    yield failure(args, error)
            return generator

        @functools.wraps(callback)
        def plain(*args: Any):
            try:
                return callback(*args)
            except Exception as error:  # noqa: BLE001 - the boundary: every failure becomes a message
                return failure(args, error)
        return plain

    return decorate
