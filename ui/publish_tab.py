"""Publish tab: a finished job's adapter or merged model, or the chat app, to a hub, with a clickable link."""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from deploy.hubs.base import PublishError
from deploy.publish import publish, stage
from tuner.jobs import get_job
from ui.chat_tab import finished_jobs
from ui.access_guard import current_oauth_token
from ui.feedback import guarded, info
from ui.i18n import Labels, t

HUB_NAMES = {"hf": "Hugging Face", "modelscope": "ModelScope", "openxlab": "OpenXLab"}


def _scrub(text: str, token: str) -> str:
    for secret in {token, *token.split(":")} - {""}:
        text = text.replace(secret, "***")
    return text


def space_hardware_choices() -> list[str]:
    """The hardware names a Space may ask for, from huggingface_hub's own list."""
    try:
        from huggingface_hub import SpaceHardware
    except ImportError:
        return ["cpu-basic", "t4-small", "l4x1", "a10g-small", "a100-large"]
    return [hardware.value for hardware in SpaceHardware]


def run_publish(lang: str, job_id: str | None, what: str, hub: str, repo_id: str, private: bool, token: str,
                model_repo: str, endpoint: str, hardware: str | None = None):
    repo_id, token = (repo_id or "").strip(), (token or "").strip()
    hardware = ((hardware or "").strip() or None) if what == "studio" else None  # a Space of the studio only
    if not token and hub == "hf" and os.environ.get("OAUTH_CLIENT_ID"):
        token = current_oauth_token()  # signed in with Hugging Face on a Space: push as that user
    if not repo_id or "/" not in repo_id:
        raise ValueError(t("publish.need_repo", lang))
    job = get_job(job_id) if job_id and what not in ("app", "studio") else None
    if what not in ("app", "studio") and job is None:
        raise ValueError(t("publish.need_job", lang))
    steps: queue.Queue = queue.Queue()
    outcome: dict = {}

    def work() -> None:
        try:
            outcome["result"] = publish(what, hub, repo_id, job=job, token=token or None, private=bool(private),
                                        model_repo=(model_repo or "").strip(), endpoint=(endpoint or "").strip()
                                        or None, hardware=hardware, progress=steps.put)
        except Exception as error:  # noqa: BLE001 - handed to the callback's thread
            outcome["error"] = error
        steps.put(None)

    threading.Thread(target=work, daemon=True).start()
    shown = []
    while (step := steps.get()) is not None:
        shown.append(f"- {_scrub(step, token)}")
        yield info(t("publish.working", lang, hub=HUB_NAMES[hub])) + "\n\n" + "\n".join(shown), gr.skip()
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, PublishError):
            raise PublishError(error.kind, _scrub(error.detail, token)) from None
        raise type(error)(_scrub(str(error), token)) from None
    result = outcome["result"]
    link = f"✅ {t('publish.done', lang, hub=HUB_NAMES[hub])}: [{result.url}]({result.url})"
    next_model_repo = repo_id if what in ("adapter", "model") else gr.skip()
    yield link + f"\n\n{t('publish.files', lang, n=len(result.files))}", next_model_repo


def download_bundle(lang: str, job_id: str | None, what: str, hub: str, repo_id: str, model_repo: str):
    """The exact folder that would be pushed, as a zip (nothing is sent anywhere)."""
    job = get_job(job_id) if job_id and what not in ("app", "studio") else None
    repo_id = (repo_id or "").strip() or "you/my-assistant"
    work = Path(tempfile.mkdtemp(prefix="tuner-bundle-"))
    folder = stage(what, work / "bundle", repo_id, job, hub, (model_repo or "").strip())
    archive = shutil.make_archive(str(work / f"{what}-{repo_id.replace('/', '-')}"), "zip", folder)
    return info(t("publish.bundle_ready", lang)), gr.update(value=archive, visible=True)


def build(labels: Labels, lang: gr.Radio) -> SimpleNamespace:
    with gr.Row():
        job = labels(gr.Dropdown, choices=finished_jobs(), value=(finished_jobs() or [None])[0],
                     label_key="publish.job", elem_id="publish-job", scale=3)
        refresh = labels(gr.Button, value_key="train.refresh", size="sm", scale=0, min_width=90)
        what = labels(gr.Radio, choices_key=[("publish.adapter", "adapter"), ("publish.model", "model"),
                                             ("publish.app", "app"), ("publish.studio", "studio")],
                      value="adapter", label_key="publish.what", info_key="publish.what_info",
                      elem_id="publish-what", scale=3)
    with gr.Row():
        hub = gr.Radio(choices=[(name, key) for key, name in HUB_NAMES.items()], value="hf", label="Hub",
                       elem_id="publish-hub", scale=2)
        repo_id = labels(gr.Textbox, label_key="publish.repo", placeholder="you/alice-assistant",
                         info_key="publish.repo_info", elem_id="publish-repo", scale=3)
        private = labels(gr.Checkbox, value=True, label_key="publish.private", elem_id="publish-private", scale=1)
    with gr.Row():
        token = labels(gr.Textbox, type="password", label_key="publish.token", info_key="publish.token_info",
                       elem_id="publish-token", scale=3)
        model_repo = labels(gr.Textbox, label_key="publish.model_repo", info_key="publish.model_repo_info",
                            elem_id="publish-model-repo", scale=3)
    with labels(gr.Accordion, label_key="publish.advanced", open=False):
        endpoint = labels(gr.Textbox, label_key="publish.endpoint", info_key="publish.endpoint_info",
                          elem_id="publish-endpoint")
        hardware = labels(gr.Dropdown, choices=[""] + space_hardware_choices(), value="", allow_custom_value=True,
                          label_key="publish.hardware", info_key="publish.hardware_info", elem_id="publish-hardware")
    with gr.Row():
        go = labels(gr.Button, value_key="publish.go", variant="primary", elem_id="publish-go")
        dry = labels(gr.Button, value_key="publish.dry_run", elem_id="publish-dry-run")
    message = gr.Markdown(elem_id="publish-message")
    bundle = labels(gr.File, label_key="publish.bundle", interactive=False, visible=False, elem_id="publish-bundle")

    go.click(guarded(2, 0)(run_publish),
             [lang, job, what, hub, repo_id, private, token, model_repo, endpoint, hardware],
             [message, model_repo], concurrency_limit=2, concurrency_id="publish")
    dry.click(guarded(2, 0)(download_bundle), [lang, job, what, hub, repo_id, model_repo], [message, bundle])
    refresh.click(lambda j: gr.update(choices=finished_jobs(), value=j or (finished_jobs() or [None])[0]), job, job)
    return SimpleNamespace(job=job, refresh=refresh)
