"""Fine-tune tab: choose model, data and settings; see the config, command and estimate; start; follow jobs."""

from __future__ import annotations

import dataclasses
import html
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pandas as pd

from tuner.data import dataset_path, list_datasets, read_jsonl_records
from tuner.data.stats import dataset_stats
from tuner.estimate import estimate_training, model_shape
from tuner.jobs import (Job, JobError, JobState, cancel_job, create_job, get_job, list_jobs, queue_position,
                        resume_job, start_job)
from tuner.kernels import KERNEL_CHOICES
from tuner.lora_training import CHOICES as LORA_KERNELS
from tuner.lora_training import FROZEN_CHOICES as FROZEN_DTYPES
from tuner.launch import shell_command, train_command
from tuner.models import EMBEDDED_MODEL, guess_template, resolve_model, template_names
from tuner.progress import ProgressCache
from tuner.spec import (DEEPSPEED_CHOICES, OPTIMIZERS, PRECISIONS, PRESETS, TrainSpec, render_config, spec_for_model,
                        spec_problems)
from tuner.access import check_model_choice, configured_mode
from tuner.runtime import Place, current_place
from ui.access_guard import current_caller, current_oauth_token
from ui.data_tab import _tokenizer
from tuner.spec import has_cuda
from ui.feedback import guarded, info, ok
from ui.i18n import Labels, t

BASIC = ("max_epochs", "lr", "batch_size", "accumulative_counts", "max_length", "pack_to_max_length",
         "lora_r", "lora_alpha", "lora_dropout", "warmup_ratio", "precision")
ADVANCED = ("gpus", "deepspeed", "kernels", "lora_kernel", "frozen_dtype", "optimizer", "offload_activations",
            "seed", "save_steps", "save_total_limit", "evaluation_freq", "evaluation_max_new_tokens", "max_norm",
            "weight_decay", "system", "evaluation_inputs")
FIELDS = BASIC + ADVANCED
_progress = ProgressCache()



def model_choices() -> list[tuple[str, str]]:
    return [(preset.label, preset.model) for preset in PRESETS.values()]


def default_method(model: str) -> str:
    return spec_for_model(model).method if has_cuda() else "lora"


def field_component(labels: Labels, name: str, default):
    common = dict(label_key=f"spec.{name}", info_key=f"spec.{name}.info", elem_id=f"spec-{name}")
    if name == "precision":
        return labels(gr.Dropdown, choices=list(PRECISIONS), value=default, **common)
    if name == "deepspeed":
        return labels(gr.Dropdown, choices=list(DEEPSPEED_CHOICES), value=default, **common)
    if name == "kernels":
        return labels(gr.Dropdown, choices=list(KERNEL_CHOICES), value=default, **common)
    if name == "optimizer":
        return labels(gr.Dropdown, choices=list(OPTIMIZERS), value=default, **common)
    if name in ("lora_kernel", "frozen_dtype"):
        choices = LORA_KERNELS if name == "lora_kernel" else FROZEN_DTYPES
        return labels(gr.Dropdown, choices=list(choices), value=default, **common)
    if name == "system":
        return labels(gr.Textbox, value=default, lines=2, **common)
    if name == "evaluation_inputs":
        return labels(gr.Textbox, value="\n".join(default), lines=3, **common)
    if isinstance(default, bool):
        return labels(gr.Checkbox, value=default, **common)
    if isinstance(default, int):
        return labels(gr.Number, value=default, precision=0, **common)
    return labels(gr.Number, value=default, **common)


def field_values(spec: TrainSpec) -> list:
    values = []
    for name in FIELDS:
        value = getattr(spec, name)
        values.append("\n".join(value) if name == "evaluation_inputs" else value)
    return values


def spec_from_form(model: str, template: str, method: str, dataset: str, values: list) -> TrainSpec:
    if not dataset:
        raise ValueError("Choose a data set (make one in the Data tab).")
    settings = {}
    defaults = TrainSpec()
    for name, value in zip(FIELDS, values):
        default = getattr(defaults, name)
        if name == "evaluation_inputs":
            value = [line.strip() for line in (value or "").splitlines() if line.strip()]
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int):
            value = int(value or 0)
        elif isinstance(default, float):
            value = float(value or 0)
        settings[name] = value
    model = (model or EMBEDDED_MODEL).strip()
    check_model_choice(configured_mode(), current_caller(), model)
    return spec_for_model(model, template=template or "", method=method, data_files=[str(dataset_path(dataset))],
                          **settings)


def model_changed(model: str):
    spec = spec_for_model((model or EMBEDDED_MODEL).strip())
    return [gr.update(value=guess_template(spec.model)), gr.update(value=default_method(spec.model)),
            *[gr.update(value=v) for v in field_values(spec)]]


def preview(lang: str, model: str, template: str, method: str, dataset: str, *values):
    """The estimate, the XTuner config and the command that Start would run, without starting."""
    spec = spec_from_form(model, template, method, dataset, list(values))
    problems = spec_problems(spec)
    model_path = resolve_model(spec.model) if not problems else spec.model
    records = read_jsonl_records(Path(spec.data_files[0])) if Path(spec.data_files[0]).is_file() else []
    stats = dataset_stats(records, _tokenizer(spec.model), spec.prompt_template, spec.max_length)
    tokens = sum(min(n, spec.max_length) for n in stats.token_lengths)
    shape = model_shape(model_path)
    estimate = estimate_training(spec, shape, tokens, has_cuda()).describe() if shape else t("train.no_estimate", lang)
    text = f"**{t('train.estimate', lang)}:** {estimate}"
    if problems:
        text = "\n".join(f"- ⚠️ {p}" for p in problems) + "\n\n" + text
    config = render_config(spec, "config.py", model_path=model_path)
    command, env = train_command(Path("config.py"), Path("work_dir"), spec)
    config_file = Path(gr.utils.get_upload_folder()) / "tuner-preview" / "config.py"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config, encoding="utf-8")
    return text, config, shell_command(command, env), str(config_file), gr.update(open=True)


def start(lang: str, job_name: str, merge: bool, publish: bool, publish_repo: str, model: str, template: str,
          method: str, dataset: str, *values):
    if not current_place().can_train:
        raise JobError(t("where.zerogpu", lang))
    spec = spec_from_form(model, template, method, dataset, list(values))
    publish_after, secrets = None, {}
    if publish:
        publish_repo = (publish_repo or "").strip()
        if "/" not in publish_repo:
            raise ValueError(t("publish.need_repo", lang))
        publish_after = {"hub": "hf", "repo": publish_repo, "private": True}
        if current_oauth_token():  # the signed-in owner's token: handed to the job's process, never written
            secrets["TUNER_PUBLISH_TOKEN"] = current_oauth_token()
    from tuner.bootstrap import require_xtuner

    require_xtuner()
    job = create_job(spec, job_name.strip() or dataset)
    start_job(job, merge_after=merge, publish_after=publish_after, secret_env=secrets)
    return (ok(t("train.started", lang, job=job.id)), gr.update(choices=job_choices(lang), value=job.id),
            gr.update(open=False))


def job_choices(lang: str) -> list[tuple[str, str]]:
    choices = []
    for job in list_jobs():
        choices.append((job.id, job.id))  # the state is in the status line, which follows it live
    return choices


def refresh_jobs(lang: str, selected: str | None):
    """The job list, keeping the selection; with none, the running job (or the newest)."""
    choices = job_choices(lang)
    ids = [value for _, value in choices]
    if selected not in ids:
        active = [job.id for job in list_jobs()
                  if job.read_status().state in (JobState.RUNNING, JobState.CONVERTING, JobState.QUEUED)]
        selected = (active or ids or [None])[0]
    return gr.update(choices=choices, value=selected)


def act(lang: str, job_id: str | None, action: str):
    if not job_id:
        raise JobError(t("train.no_job", lang))
    job = get_job(job_id)
    if action == "cancel":
        status = cancel_job(job)
    elif action == "resume":
        status = resume_job(job)
    else:
        from tuner.convert import merge_job

        merge_job(job)
        return ok(t("train.merged", lang, path=job.merged_dir)), gr.update(choices=job_choices(lang), value=job_id)
    return info(t("train.now", lang, job=job.id, state=t("state." + status.state.value, lang))), \
        gr.update(choices=job_choices(lang), value=job_id)


def progress_bar(fraction: float, text: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f'<div class="tuner-progress" data-percent="{percent:.0f}"><div class="tuner-progress-fill" '
            f'style="width:{percent:.1f}%"></div></div><div class="tuner-progress-text">{html.escape(text)}</div>')


def _quote(text: str) -> str:
    lines = html.escape(text).strip().splitlines() or ["…"]
    return "\n".join(f"> {line}" for line in lines)


def job_view(lang: str, job_id: str | None, shown: tuple | None = None):
    """Status line, progress bar, loss curve, sample answers and log tail of a job, and what they show.

    ``shown`` is what the page shows already: when nothing changed, nothing is sent (a redrawn plot
    every two seconds costs the browser a CPU core that the training on the same machine needs).
    """
    empty_loss = pd.DataFrame({"iteration": [], "loss": []})
    if not job_id:
        return t("train.no_jobs", lang), progress_bar(0, ""), empty_loss, "", "", gr.update(), None
    job = get_job(job_id)
    status = job.status()
    progress = _progress.progress(job.log_path, job.template())
    now_showing = (lang, job_id, status.state, status.reason, len(progress.iterations), len(progress.samples),
                   queue_position(job) if status.state == JobState.QUEUED else 0)
    if now_showing == shown:
        return (gr.skip(),) * 6 + (shown,)
    latest = progress.latest
    state = t("state." + status.state.value, lang)
    lines = [f"**{job.id}** · {state}"]
    if status.state == JobState.QUEUED:
        lines.append(t("train.queued", lang, position=queue_position(job)))
    if status.reason:
        lines.append(("❌ " if status.state == JobState.FAILED else "") + status.reason)
    if status.published:
        lines.append(t("train.published", lang, url=status.published))
    if status.publish_error:
        lines.append("⚠️ " + t("train.publish_failed", lang, reason=status.publish_error))
    if status.state == JobState.SUCCEEDED:
        lines.append(t("train.done", lang, adapter=job.adapter_dir) +
                     (" " + t("train.merged", lang, path=job.merged_dir) if (job.merged_dir / "config.json").exists()
                      else ""))
    if latest:
        eta = f" · ETA {latest.eta}" if latest.eta and not status.state.finished else ""
        loss = f" · loss {latest.loss:.4f}" if latest.loss is not None else ""
        bar = progress_bar(progress.fraction, f"{latest.iteration}/{latest.total}{loss}{eta}")
    else:
        waiting = t("train.waiting", lang) if status.state in (JobState.RUNNING, JobState.QUEUED) else ""
        bar = progress_bar(0, waiting)
    losses = pd.DataFrame(progress.losses(), columns=["iteration", "loss"])
    samples = "\n\n".join(f"**{t('train.after', lang, n=s.after_iteration)}** · {html.escape(s.question)}\n\n"
                          + _quote(s.answer) for s in progress.samples[-6:][::-1])
    buttons = gr.update(value=t("train.resume", lang),
                        interactive=status.state in (JobState.FAILED, JobState.CANCELLED))
    return ("\n\n".join(lines), bar, losses, samples or t("train.no_samples", lang), job.log_tail(60), buttons,
            now_showing)


def build(labels: Labels, lang: gr.Radio, place: Place | None = None) -> SimpleNamespace:
    place = place or current_place()
    spec = spec_for_model(EMBEDDED_MODEL)
    if place.zerogpu:
        labels(gr.Markdown, value_key="where.zerogpu", elem_id="train-zerogpu")
    with gr.Row():
        model = labels(gr.Dropdown, choices=model_choices(), value=EMBEDDED_MODEL, allow_custom_value=True,
                       label_key="train.model", info_key="train.model_info", elem_id="train-model", scale=3)
        template = labels(gr.Dropdown, choices=template_names(), value=guess_template(EMBEDDED_MODEL),
                          label_key="train.template", info_key="train.template_info", elem_id="train-template",
                          scale=2)
        method = labels(gr.Radio, choices_key=[("train.qlora", "qlora"), ("train.lora", "lora")],
                        value=default_method(EMBEDDED_MODEL), label_key="train.method", info_key="train.method_info",
                        elem_id="train-method", scale=2)
    with gr.Row():
        dataset = labels(gr.Dropdown, choices=list_datasets(), value=(list_datasets() or [None])[0],
                         label_key="train.dataset", info_key="train.dataset_info", elem_id="train-dataset", scale=3)
        refresh_data = labels(gr.Button, value_key="train.refresh", size="sm", scale=0, min_width=90)
        job_name = labels(gr.Textbox, label_key="train.job_name", placeholder_key="train.job_name_hint", scale=2)
    fields = {}
    for row in (BASIC[:6], BASIC[6:]):
        with gr.Row(equal_height=True):
            for name in row:
                fields[name] = field_component(labels, name, getattr(spec, name))
    with labels(gr.Accordion, label_key="train.advanced", open=False):
        for row in (ADVANCED[:6], ADVANCED[6:10], ADVANCED[10:]):
            with gr.Row(equal_height=True):
                for name in row:
                    fields[name] = field_component(labels, name, getattr(spec, name))
        with gr.Row(equal_height=True):
            merge = labels(gr.Checkbox, value=False, label_key="train.merge_after", info_key="train.merge_after_info")
            publish = labels(gr.Checkbox, value=not place.persistent, label_key="train.publish_after",
                             info_key="train.publish_after_info", elem_id="train-publish-after")
            publish_repo = labels(gr.Textbox, label_key="train.publish_repo", placeholder="you/alice-assistant",
                                  elem_id="train-publish-repo")
    values = [fields[name] for name in FIELDS]
    with gr.Row():
        preview_button = labels(gr.Button, value_key="train.preview", elem_id="train-preview")
        start_button = labels(gr.Button, value_key="train.start", variant="primary", elem_id="train-start",
                              interactive=place.can_train)
    message = gr.Markdown(elem_id="train-message")

    labels(gr.Markdown, value_key="train.jobs_title")
    with gr.Row():
        job = labels(gr.Dropdown, choices=[], label_key="train.job", elem_id="train-job", scale=4)
        refresh_job_list = labels(gr.Button, value_key="train.refresh", size="sm", scale=0, min_width=90)
        cancel = labels(gr.Button, value_key="train.cancel", variant="stop", elem_id="train-cancel", scale=1)
        resume = labels(gr.Button, value_key="train.resume", elem_id="train-resume", scale=1)
        merge_now = labels(gr.Button, value_key="train.merge_now", elem_id="train-merge", scale=1)
    status = gr.Markdown(elem_id="train-status")
    bar = gr.HTML(progress_bar(0, ""), elem_id="train-progress")
    with gr.Row():
        loss = labels(gr.LinePlot, x="iteration", y="loss", label_key="train.loss", height=280, elem_id="train-loss",
                      scale=3)
        with gr.Column(scale=2):
            labels(gr.Markdown, value_key="train.samples_title")
            samples = gr.Markdown(elem_id="train-samples", max_height=300)
    with labels(gr.Accordion, label_key="train.log", open=False):
        log = gr.Code(language=None, interactive=False, elem_id="train-log", max_lines=30)
    # Below the job, so that after Start its progress is in view; it folds again when a job starts.
    with labels(gr.Accordion, label_key="train.config_title", open=False) as config_section:
        command = labels(gr.Textbox, label_key="train.command", interactive=False, elem_id="train-command")
        config = gr.Code(language="python", interactive=False, elem_id="train-config", max_lines=24)
        config_file = labels(gr.File, label_key="train.config_download", interactive=False)
    # Off until the page has loaded: the page's load turns it on for the owner (and sign-in does). A timer ticking
    # from the first moment made Gradio 6.17 select the first tab again, a second or two after the visitor had
    # opened another (tests/browser/test_app.py after a reload: Fine-tune -> Data).
    timer = gr.Timer(2.0, active=False)
    shown = gr.State(None)

    form = [model, template, method, dataset, *values]
    model.change(model_changed, model, [template, method, *values])
    refresh_data.click(lambda d: gr.update(choices=list_datasets(), value=d or (list_datasets() or [None])[0]),
                       dataset, dataset)
    preview_button.click(guarded(5, 0)(preview), [lang, *form], [message, config, command, config_file, config_section])
    start_button.click(guarded(3, 0)(start), [lang, job_name, merge, publish, publish_repo, *form],
                       [message, job, config_section], scroll_to_output=True)
    refresh_job_list.click(refresh_jobs, [lang, job], job)
    cancel.click(guarded(2, 0)(lambda lg, j: act(lg, j, "cancel")), [lang, job], [message, job])
    resume.click(guarded(2, 0)(lambda lg, j: act(lg, j, "resume")), [lang, job], [message, job])
    merge_now.click(guarded(2, 0)(lambda lg, j: act(lg, j, "merge")), [lang, job], [message, job])
    view_outputs = [status, bar, loss, samples, log, resume, shown]
    job.change(guarded(7, 0)(job_view), [lang, job], view_outputs)
    timer.tick(guarded(7, 0)(job_view), [lang, job, shown], view_outputs, show_progress="hidden")
    return SimpleNamespace(model=model, template=template, dataset=dataset, job=job, message=message,
                           max_length=fields["max_length"], fields=fields, timer=timer)
