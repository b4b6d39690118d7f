"""Chat tab: talk to the base model, base + adapter or the merged model; before / after side by side."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from tuner.adapter_upload import unpack_adapter_zip
from tuner.chat import ChatLoadError, GenerationSettings, shared_cache, stream_reply
from tuner.convert import read_adapter_info
from tuner.jobs import JobState, get_job, list_jobs
from tuner.models import EMBEDDED_MODEL
from tuner.access import AccessDenied, Mode, check_model_choice, configured_mode, visitor_models
from tuner.spec import PRESETS, has_cuda
from ui.access_guard import current_caller, public
from ui.feedback import guarded, info
from ui.i18n import Labels, t

_models = shared_cache()  # the same loaded models as the /v1 API: requests to one model decode together


def finished_jobs() -> list[str]:
    return [job.id for job in list_jobs() if job.read_status().state == JobState.SUCCEEDED]


def model_label(model: str) -> str:
    """A model as a person knows it: its preset's name, or its id; never a server folder."""
    names = {preset.model: preset.label for preset in PRESETS.values()}
    names[EMBEDDED_MODEL] = "SmolLM2-135M-Instruct (embedded)"
    return names.get(model, Path(model).name if model.startswith(("/", "~", ".")) else model)


def check_choice(kind: str, job_id: str | None, adapter_zip: str | None, base: str) -> None:
    """What a visitor may chat with: finished jobs and the listed models; no upload, no free path."""
    caller, mode = current_caller(), configured_mode()
    if adapter_zip and not (caller.owner and mode != Mode.DEMO):
        raise AccessDenied("Uploading an adapter needs the owner: choose a finished job instead.")
    if job_id and kind != "base" and job_id not in finished_jobs():
        raise AccessDenied(f"No finished job named {job_id}.")
    check_model_choice(mode, caller, base)


def chosen_model(lang: str, kind: str, job_id: str | None, adapter_zip: str | None, base: str) -> tuple:
    """(kind, model, adapter) to load, and the base model to show beside it."""
    base = (base or "").strip()
    check_choice(kind, job_id, adapter_zip, base)
    if kind == "base":
        model = base or EMBEDDED_MODEL
        return ("base", model, None), None
    if kind == "adapter":
        if adapter_zip:
            adapter = unpack_adapter_zip(adapter_zip)
        elif job_id:
            adapter = get_job(job_id).adapter_dir
        else:
            raise ChatLoadError(t("chat.need_adapter", lang))
        if not (Path(adapter) / "adapter_config.json").exists():
            raise ChatLoadError(t("chat.no_adapter_yet", lang, job=job_id))
        before = base or read_adapter_info(Path(adapter)).get("base_model") or EMBEDDED_MODEL
        return ("adapter", base, adapter), ("base", before, None)
    if job_id:
        merged = get_job(job_id).merged_dir
        if not (merged / "config.json").exists():
            raise ChatLoadError(t("chat.no_merged_yet", lang, job=job_id))
        model = str(merged)
    elif base:
        model = base
    else:
        raise ChatLoadError(t("chat.need_merged", lang))
    before = read_adapter_info(Path(model)).get("base_model") or EMBEDDED_MODEL
    return ("merged", model, None), ("base", before, None)


def _text(content) -> str:
    """Gradio 6 hands content over as a list of parts ({"type": "text", "text": ...}); we wrote plain text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") if isinstance(part, dict) else str(part) for part in content)
    return str(content or "")


def _pairs(history: list[dict]) -> list[tuple[str, str]]:
    pairs, question = [], None
    for message in history:
        text = _text(message.get("content"))
        if message.get("role") == "user":
            question = text
        elif message.get("role") == "assistant" and question is not None:
            pairs.append((question, text))
            question = None
    return pairs


def respond(lang: str, message: str, after: list, before: list, compare: bool, kind: str, job_id: str | None,
            adapter_zip: str | None, base: str, four_bit: bool, system: str, temperature: float, top_p: float,
            max_new_tokens: float, repetition_penalty: float):
    message = (message or "").strip()
    if not message:
        yield after, before, "", gr.skip()
        return
    target, original = chosen_model(lang, kind, job_id, adapter_zip, base)
    yield after, before, "", info(t("chat.loading", lang))
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  top_p=float(top_p), repetition_penalty=float(repetition_penalty))
    main = _models.get(*target, load_in_4bit=bool(four_bit))
    streams = [(after, stream_reply(main, message, _pairs(after), system or None, settings))]
    if compare and original is not None:
        side = _models.get(*original, load_in_4bit=bool(four_bit))
        streams.append((before, stream_reply(side, message, _pairs(before), system or None, settings)))
    for history, _ in streams:
        history.extend([{"role": "user", "content": message}, {"role": "assistant", "content": ""}])
    shown = {"base": model_label(target[1] or EMBEDDED_MODEL),
             "adapter": f"{job_id or 'adapter'} (adapter)", "merged": f"{job_id or model_label(target[1])} (merged)"}
    owner = current_caller().owner
    status = info(t("chat.talking_to", lang, model=main.description if owner else shown[kind])
                  + (" " + t("chat.decoding", lang, how=main.decoding) if owner else ""))
    running = list(streams)
    while running:  # the two models take turns, so both answers grow at once
        for item in list(running):
            history, stream = item
            try:
                history[-1]["content"] = next(stream)
            except StopIteration:
                running.remove(item)
        yield after, before, "", status


def build(labels: Labels, lang: gr.Radio, mode: Mode | None = None) -> SimpleNamespace:
    cuda = has_cuda()
    mode = mode or configured_mode()
    with gr.Row():
        kind = labels(gr.Radio, choices_key=[("chat.base", "base"), ("chat.adapter", "adapter"),
                                             ("chat.merged", "merged")],
                      value="adapter", label_key="chat.kind", elem_id="chat-kind", scale=2)
        job = labels(gr.Dropdown, choices=finished_jobs(), value=(finished_jobs() or [None])[0],
                     label_key="chat.job", info_key="chat.job_info", elem_id="chat-job", scale=3)
        refresh = labels(gr.Button, value_key="train.refresh", size="sm", scale=0, min_width=90)
    with gr.Row():
        base = labels(gr.Dropdown, choices=[("", "")] + [(model_label(m), m) for m in visitor_models()], value="",
                      allow_custom_value=True, label_key="chat.base_model", info_key="chat.base_model_hint",
                      elem_id="chat-base", scale=3)
        with gr.Column(scale=2, visible=mode == Mode.LOCAL) as owner_only, \
                labels(gr.Accordion, label_key="chat.adapter_zip", open=False):
            adapter_zip = labels(gr.File, label_key="chat.adapter_zip", file_types=[".zip"], type="filepath",
                                 height=120)
        with gr.Column(scale=1):
            four_bit = labels(gr.Checkbox, value=False, interactive=cuda, label_key="chat.four_bit",
                              info_key="chat.four_bit_info" if cuda else "chat.four_bit_cpu")
            compare = labels(gr.Checkbox, value=True, label_key="chat.compare", info_key="chat.compare_info",
                             elem_id="chat-compare")
    with gr.Row(equal_height=True):
        before = labels(gr.Chatbot, label_key="chat.before", height=420, elem_id="chat-before")
        after = labels(gr.Chatbot, label_key="chat.after", height=420, elem_id="chat-after")
    with gr.Row():
        message = labels(gr.Textbox, label_key="chat.message", placeholder_key="chat.message_hint", scale=5,
                         elem_id="chat-message", submit_btn=False)
        send = labels(gr.Button, value_key="chat.send", variant="primary", scale=1, elem_id="chat-send")
        clear = labels(gr.Button, value_key="chat.clear", scale=0, elem_id="chat-clear")
    status = gr.Markdown(elem_id="chat-status")
    with labels(gr.Accordion, label_key="chat.settings", open=False):
        system = labels(gr.Textbox, label_key="chat.system", placeholder_key="chat.system_hint", lines=2)
        with gr.Row():
            temperature = labels(gr.Slider, 0, 1.5, value=0.0, step=0.05, label_key="chat.temperature",
                                 info_key="chat.temperature_info")
            top_p = labels(gr.Slider, 0.05, 1, value=0.9, step=0.05, label_key="chat.top_p")
            max_new = labels(gr.Slider, 16, 2048, value=256, step=16, label_key="chat.max_new_tokens")
            penalty = labels(gr.Slider, 1.0, 2.0, value=1.0, step=0.05, label_key="chat.repetition_penalty")

    inputs = [lang, message, after, before, compare, kind, job, adapter_zip, base, four_bit, system, temperature,
              top_p, max_new, penalty]
    outputs = [after, before, message, status]
    for event in (send.click, message.submit):
        event(public(guarded(4, 3)(respond)), inputs, outputs, concurrency_limit=20, concurrency_id="chat")
    clear.click(public(lambda: ([], [], "")), None, [after, before, status], api_name="chat_clear")
    compare.change(public(lambda c: gr.update(visible=c)), compare, before, api_name="chat_compare")
    refresh.click(public(lambda j: gr.update(choices=finished_jobs(), value=j if j in finished_jobs() else
                                             (finished_jobs() or [None])[0])), job, job, api_name="chat_jobs")
    return SimpleNamespace(job=job, refresh=refresh, owner_only=owner_only)

