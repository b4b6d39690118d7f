"""Tuner: make your own fine-tuned chat assistant with XTuner, in the browser.

    python app.py            # http://127.0.0.1:7860 ; on a Space (SPACE_ID) or with GRADIO_SERVER_NAME: 0.0.0.0

Tabs: Data → Fine-tune → Chat → Publish. All logic lives in ``tuner/`` and ``deploy/``; the tabs in ``ui/``
only wire widgets to it. Jobs live on disk (``TUNER_HOME``), so a reload or a restart shows the same jobs.
"""

from __future__ import annotations

import os

import gradio as gr

from ui import chat_tab, data_tab, publish_tab, train_tab
from ui.i18n import LANGUAGES, Labels, language_from_header, t

CSS = """
.tuner-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.tuner-progress-fill { height: 100%; background: var(--color-accent); transition: width 0.6s; }
.tuner-progress-text { font-size: 0.9em; margin-top: 4px; color: var(--body-text-color-subdued); }
#tuner-header { align-items: center; }
#tuner-language { max-width: 220px; }
"""


def build_app() -> gr.Blocks:
    labels = Labels("en")
    with gr.Blocks(title="Tuner · XTuner fine-tuning studio") as app:
        with gr.Row(elem_id="tuner-header"):
            labels(gr.Markdown, value_key="app.title", scale=5)
            lang = gr.Radio(choices=[(name, code) for code, name in LANGUAGES.items()], value="en",
                            show_label=False, container=False, elem_id="tuner-language", scale=1)
        labels(gr.Markdown, value_key="app.intro")
        with gr.Tabs(elem_id="tuner-tabs"):
            with labels(gr.Tab, label_key="tab.data", elem_id="tab-data"):
                data = data_tab.build(labels, lang)
            with labels(gr.Tab, label_key="tab.train", elem_id="tab-train"):
                train = train_tab.build(labels, lang)
            with labels(gr.Tab, label_key="tab.chat", elem_id="tab-chat") as chat_page:
                chat = chat_tab.build(labels, lang)
            with labels(gr.Tab, label_key="tab.publish", elem_id="tab-publish") as publish_page:
                publish = publish_tab.build(labels, lang)

        data_tab.wire_stats(data, lang, train.model, train.template, train.max_length)
        data.saved_name.change(lambda name: gr.update(choices=_datasets(), value=name or None), data.saved_name,
                               train.dataset)
        chat_page.select(lambda j: gr.update(choices=chat_tab.finished_jobs(), value=j or _first_finished()),
                         chat.job, chat.job)
        publish_page.select(lambda j: gr.update(choices=chat_tab.finished_jobs(), value=j or _first_finished()),
                            publish.job, publish.job)

        lang.change(labels.updates, lang, labels.components, show_progress="hidden")

        def on_load(request: gr.Request):
            chosen = language_from_header(request.headers.get("accept-language", "")) if request else "en"
            return [gr.update(value=chosen), train_tab.refresh_jobs(chosen, None)]

        app.load(on_load, None, [lang, train.job])
    return app


def _datasets() -> list[str]:
    from tuner.data import list_datasets

    return list_datasets()


def _first_finished() -> str | None:
    jobs = chat_tab.finished_jobs()
    return jobs[0] if jobs else None


def main() -> None:
    app = build_app()
    # A training runs in its own process, so only chat and publishing share this queue.
    app.queue(default_concurrency_limit=8)
    on_space = bool(os.environ.get("SPACE_ID"))
    server_name = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if on_space else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    app.launch(server_name=server_name, server_port=port, css=CSS, show_error=False,
               footer_links=["api", "settings"])


if __name__ == "__main__":
    main()
