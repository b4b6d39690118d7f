"""Data tab: build self-cognition data or upload a file, check it, look at it, split it, save it by name."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from tuner.data import (FORMATS, Conversation, dataset_stats, is_table_path, read_data, safe_dataset_name,
                        save_dataset, self_cognition_records, split_records, table_headers)
from tuner.data.histogram import length_histogram
from tuner.models import guess_template, resolve_model
from ui.feedback import guarded, ok
from ui.i18n import Labels, t

PREVIEW_ROWS = 50
MAX_ERRORS_SHOWN = 50
AUTO = "auto"


@lru_cache(maxsize=4)
def _tokenizer(model: str):
    """The model's tokenizer, or None when it is not available here (a hub id offline)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(resolve_model(model), trust_remote_code=True)
    except Exception:  # noqa: BLE001 - stats fall back to counting characters
        return None


def combined(sources: dict) -> list[Conversation]:
    return [*sources.get("self_cognition", []), *sources.get("file", [])]


def preview_frame(records: list[Conversation]) -> pd.DataFrame:
    rows = []
    for record in records[:PREVIEW_ROWS]:
        first = record.turns[0]
        rows.append({"#": len(rows) + 1, "system": first.system, "input": first.input, "output": first.output,
                     "turns": len(record.turns)})
    columns = ["#", "system", "input", "output", "turns"]
    if not any(row["system"] for row in rows):
        columns.remove("system")
    return pd.DataFrame(rows, columns=columns)


def histogram_frame(lengths: list[int]) -> pd.DataFrame:
    return pd.DataFrame(length_histogram(lengths), columns=["tokens", "records"])


def stats_view(records: list[Conversation], model: str, template: str, max_length: int, lang: str):
    if not records:
        return t("data.stats_empty", lang), histogram_frame([])
    tokenizer = _tokenizer(model)
    stats = dataset_stats(records, tokenizer, template or guess_template(model), int(max_length))
    counted = t("data.counted_with", lang, model=model) if tokenizer else t("data.counted_chars", lang)
    text = t("data.stats", lang, records=stats.records, turns=stats.turns, mean=stats.mean, median=stats.median,
             maximum=stats.maximum, over=stats.over_max_length, max_length=int(max_length)) + f"\n\n{counted}"
    return text, histogram_frame(stats.token_lengths)


def sources_summary(sources: dict, lang: str) -> str:
    parts = []
    if sources.get("self_cognition"):
        parts.append(t("data.source_cognition", lang, n=len(sources["self_cognition"])))
    if sources.get("file"):
        parts.append(t("data.source_file", lang, n=len(sources["file"]), file=sources.get("file_name", "")))
    return " + ".join(parts) if parts else t("data.no_records", lang)


def generate(lang: str, sources: dict, name: str, description: str, count: float, languages: list[str]):
    records = self_cognition_records(name.strip(), description.strip(), int(count), languages=tuple(languages))
    sources = {**sources, "self_cognition": records}
    return sources, ok(t("data.generated", lang, n=len(records), name=name.strip())), \
        f"{name.strip()}-assistant".lower().replace(" ", "-")


def file_changed(lang: str, file: str | None):
    """Show the column mapping for a table, filled with its headers."""
    if not file or not is_table_path(Path(file)):
        return [gr.update(visible=False)] + [gr.update(choices=[], value=None)] * 3
    headers = [AUTO, *table_headers(Path(file))]
    return [gr.update(visible=True)] + [gr.update(choices=headers, value=AUTO)] * 3


def check_file(lang: str, sources: dict, file: str | None, fmt: str, q: str | None, a: str | None, s: str | None):
    if not file:
        raise ValueError(t("data.no_file", lang))
    column_map = {role: col for role, col in (("input", q), ("output", a), ("system", s)) if col and col != AUTO}
    result = read_data(file, None if fmt == AUTO else fmt, column_map or None)
    name = Path(file).name
    lines = [f"- `{e}`".replace(str(file), name) for e in result.errors[:MAX_ERRORS_SHOWN]]
    lines += [f"- `{e}`".replace(str(file), name) for e in result.skipped[:MAX_ERRORS_SHOWN]]
    if result.errors:
        more = len(result.errors) - MAX_ERRORS_SHOWN
        head = t("data.invalid", lang, n=len(result.errors), file=name)
        tail = f"\n\n{t('data.more_errors', lang, n=more)}" if more > 0 else ""
        return sources, f"❌ {head}\n\n" + "\n".join(lines) + tail
    sources = {**sources, "file": result.records, "file_name": name}
    message = ok(t("data.valid", lang, n=len(result.records), file=name, format=result.format))
    if result.skipped:
        message += f"\n\n{t('data.skipped', lang, n=len(result.skipped))}\n\n" + "\n".join(lines)
    return sources, message


def clear(sources: dict, which: str) -> dict:
    return {k: v for k, v in sources.items() if k != which and not (which == "file" and k == "file_name")}


def save(lang: str, sources: dict, name: str, test_ratio: float, seed: float):
    records = combined(sources)
    if not records:
        raise ValueError(t("data.no_records", lang))
    name = safe_dataset_name(name.strip())
    train, test = split_records(records, float(test_ratio), int(seed)) if test_ratio > 0 else (records, [])
    folder = save_dataset(name, train, test or None)
    return ok(t("data.saved", lang, name=name, train=len(train), test=len(test), folder=folder)), name


def build(labels: Labels, lang: gr.Radio) -> SimpleNamespace:
    sources = gr.State({})
    with gr.Row():
        with gr.Column(scale=1):
            labels(gr.Markdown, value_key="data.cognition_title")
            name = labels(gr.Textbox, label_key="data.name", placeholder_key="data.name_hint", elem_id="data-name")
            description = labels(gr.Textbox, label_key="data.description", placeholder_key="data.description_hint",
                                 elem_id="data-description")
            count = labels(gr.Slider, minimum=10, maximum=2000, step=10, value=160, label_key="data.count",
                           info_key="data.count_info", elem_id="data-count")
            languages = labels(gr.CheckboxGroup, choices_key=[("lang.zh", "zh"), ("lang.en", "en")],
                               value=["zh", "en"], label_key="data.languages")
            generate_button = labels(gr.Button, value_key="data.generate", variant="primary",
                                     elem_id="data-generate")
        with gr.Column(scale=1):
            labels(gr.Markdown, value_key="data.upload_title")
            file = labels(gr.File, label_key="data.file", file_types=[".json", ".jsonl", ".csv", ".tsv", ".xlsx"],
                          type="filepath", elem_id="data-file")
            fmt = labels(gr.Dropdown, choices_key=[("data.format_auto", AUTO)] + [(f"format.{f}", f) for f in FORMATS],
                         value=AUTO, label_key="data.format")
            with gr.Group(visible=False) as mapping:
                labels(gr.Markdown, value_key="data.mapping")
                with gr.Row():
                    q_col = labels(gr.Dropdown, label_key="data.col_question", choices=[])
                    a_col = labels(gr.Dropdown, label_key="data.col_answer", choices=[])
                    s_col = labels(gr.Dropdown, label_key="data.col_system", choices=[])
            check_button = labels(gr.Button, value_key="data.check", elem_id="data-check")
    message = gr.Markdown(elem_id="data-message")
    summary = gr.Markdown(elem_id="data-summary")
    with gr.Row():
        clear_cognition = labels(gr.Button, value_key="data.clear_cognition", size="sm")
        clear_file = labels(gr.Button, value_key="data.clear_file", size="sm")
    with gr.Row():
        with gr.Column(scale=3):
            preview = labels(gr.Dataframe, value=preview_frame([]), label_key="data.preview", wrap=True, max_height=360, interactive=False,
                             elem_id="data-preview")
        with gr.Column(scale=2):
            stats = gr.Markdown(elem_id="data-stats")
            histogram = labels(gr.BarPlot, x="tokens", y="records", label_key="data.histogram", height=260,
                               x_label_angle=-45, y_lim=[0, None],
                               elem_id="data-histogram")
    labels(gr.Markdown, value_key="data.save_title")
    with gr.Row():
        dataset_name = labels(gr.Textbox, label_key="data.dataset_name", placeholder_key="data.dataset_name_hint",
                              elem_id="data-dataset-name")
        test_ratio = labels(gr.Slider, minimum=0, maximum=0.5, step=0.05, value=0.0, label_key="data.test_ratio",
                            info_key="data.test_ratio_info")
        seed = labels(gr.Number, value=0, precision=0, label_key="data.seed")
    save_button = labels(gr.Button, value_key="data.save", variant="primary", elem_id="data-save")
    saved_name = gr.State("")

    generate_button.click(guarded(3, 1)(generate), [lang, sources, name, description, count, languages],
                          [sources, message, dataset_name])
    file.change(file_changed, [lang, file], [mapping, q_col, a_col, s_col])
    check_button.click(guarded(2, 1)(check_file), [lang, sources, file, fmt, q_col, a_col, s_col],
                       [sources, message])
    clear_cognition.click(lambda s: clear(s, "self_cognition"), sources, sources)
    clear_file.click(lambda s: clear(s, "file"), sources, sources)
    save_button.click(guarded(2, 0)(save), [lang, sources, dataset_name, test_ratio, seed], [message, saved_name])
    return SimpleNamespace(sources=sources, summary=summary, preview=preview, stats=stats, histogram=histogram,
                           saved_name=saved_name, message=message)


def wire_stats(tab: SimpleNamespace, lang: gr.Radio, model: gr.components.Component,
               template: gr.components.Component, max_length: gr.components.Component) -> None:
    """Preview and statistics follow the data and the model chosen in the Fine-tune tab."""

    def refresh(lang_value: str, sources: dict, model_value: str, template_value: str, max_length_value: float):
        records = combined(sources)
        text, frame = stats_view(records, model_value, template_value, max_length_value or 2048, lang_value)
        return sources_summary(sources, lang_value), preview_frame(records), text, frame

    outputs = [tab.summary, tab.preview, tab.stats, tab.histogram]
    tab.sources.change(guarded(4, 2)(refresh), [lang, tab.sources, model, template, max_length], outputs)
