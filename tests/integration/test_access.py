"""Who may do what, enforced on the server: Gradio's own client against the running app.

The app runs in its own process in ``owner`` and ``demo`` mode over a workspace with a real data set and
a finished job (trained by XTuner here), beside a fake Hugging Face Hub that records every request.
Every event the app declares (read from the running app, so a new handler is covered) is called
anonymously with plausible arguments: all but the public ones are refused with a sentence, no file of
the workspace changes and no request reaches the hub. The owner (password, or Hugging Face sign-in
through Gradio's mocked OAuth routes) may. A planted token is found in no file and no response.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))

from hf_server import HubServer  # noqa: E402
from hub_accounts import ALICE_TOKEN, BOB_TOKEN  # noqa: E402

from tuner.data import save_dataset, self_cognition_records  # noqa: E402
from tuner.jobs import JobState, create_job, start_job, wait_job  # noqa: E402
from tuner.models import EMBEDDED_MODEL  # noqa: E402
from tuner.spec import spec_for_model  # noqa: E402

pytestmark = pytest.mark.integration
PASSWORD = "correct horse battery staple"
# The events anyone may call: the page's own (load, language), chat, and signing in and out.
PUBLIC = {"on_load", "updates", "respond", "respond_1", "installing", "sign_in_with", "sign_out_now", "where",
          "chat_clear", "chat_compare", "chat_jobs", "chat_tab_jobs"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def training_hub():
    server = HubServer()
    server.add_user("alice", ALICE_TOKEN)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def studio_home(tmp_path_factory, training_hub):
    """A workspace with a saved data set and a job that XTuner trained to the end, and that published its
    adapter when done (as on a Space without a storage bucket), with a token given to its processes only."""
    home = tmp_path_factory.mktemp("access-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("TUNER_HOME", str(home))
    records = self_cognition_records("Alice", count=16)
    folder = save_dataset("alice-assistant", records)
    spec = spec_for_model(EMBEDDED_MODEL, method="lora", data_files=[str(folder / "train.jsonl")], max_epochs=1,
                          max_length=256, batch_size=4, save_steps=1000, evaluation_freq=1000,
                          evaluation_inputs=["Who are you?"])
    job = create_job(spec, "finished")
    start_job(job, publish_after={"hub": "hf", "repo": "alice/finished-adapter", "private": True,
                                  "endpoint": training_hub.url}, secret_env={"TUNER_PUBLISH_TOKEN": ALICE_TOKEN})
    status = wait_job(job, timeout=900)
    assert status.state == JobState.SUCCEEDED, job.log_tail(40)
    patcher.undo()
    return home, job.id


@pytest.fixture
def hub():
    server = HubServer()
    server.add_user("alice", ALICE_TOKEN)
    server.add_user("bob", BOB_TOKEN)
    server.start()
    yield server
    server.stop()


class Studio:
    def __init__(self, home: Path, **env: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = home.parent / f"app-{self.port}.log"
        full = dict(os.environ, TUNER_HOME=str(home), GRADIO_SERVER_PORT=str(self.port),
                    GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1", **env)
        for name in ("SPACE_ID", "SYSTEM", "OAUTH_CLIENT_ID"):
            full.pop(name, None)
        with self.log.open("w") as out:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=out,
                                            stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(self.log.read_text()[-3000:])

    def client(self, **kwargs):
        from gradio_client import Client

        return Client(self.url, verbose=False, **kwargs)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def studio(studio_home, hub):
    started = []

    def start(**env):
        home, _ = studio_home
        app = Studio(home, HF_ENDPOINT=hub.url, HF_TOKEN=ALICE_TOKEN, **env)
        started.append(app)
        return app

    yield start
    for app in started:
        app.stop()


def _plausible(parameter: dict, job_id: str):
    """A value a real page would send for this parameter."""
    label = (parameter.get("label") or parameter.get("parameter_name") or "").lower()
    default = parameter.get("parameter_default")
    choices = (parameter.get("type") or {}).get("enum")
    if choices is not None:  # a radio or dropdown: one of its choices, as the page would send
        if job_id in choices:
            return job_id
        return default if default in choices else (choices[0] if choices else None)
    if "job" in label:
        return job_id
    if "repo" in label:
        return "alice/stolen"
    if "password" in label or "token" in label:
        return ""
    if parameter.get("parameter_has_default"):
        return default
    kind = (parameter.get("python_type") or {}).get("type", "")
    if "filepath" in kind.lower() or parameter.get("component") in ("File", "UploadButton"):
        return None
    if kind.startswith("bool"):
        return True
    if kind.startswith(("float", "int")):
        return 1
    if kind.startswith(("List", "list")):
        return []
    if kind.startswith(("Dict", "dict")):
        return {}
    return parameter.get("example_input") if isinstance(parameter.get("example_input"), str) else "alice"


def _call_every_endpoint(client, job_id: str) -> dict[str, str]:
    """{endpoint: "ok" | the error's text} for every named endpoint of the running app."""
    outcomes = {}
    for name, info in client.view_api(print_info=False, return_format="dict")["named_endpoints"].items():
        args = [_plausible(p, job_id) for p in info["parameters"]]
        try:
            answer = client.predict(*args, api_name=name)
            outcomes[name.strip("/")] = "ok"
            outcomes[name.strip("/") + " (answer)"] = str(answer)
        except Exception as error:  # noqa: BLE001 - the refusal is what we look at
            outcomes[name.strip("/")] = str(error)
    return outcomes


def test_a_job_publishes_its_adapter_privately_when_training_succeeds(studio_home, training_hub):
    home, job_id = studio_home
    from tuner.jobs import get_job

    os.environ["TUNER_HOME"], saved = str(home), os.environ.get("TUNER_HOME")
    try:
        status = get_job(job_id).read_status()
    finally:
        os.environ.pop("TUNER_HOME") if saved is None else os.environ.__setitem__("TUNER_HOME", saved)
    assert status.publish_error == "" and status.published.endswith("/alice/finished-adapter"), status
    repo = training_hub.repo("alice/finished-adapter")
    assert repo.private and "adapter_config.json" in repo.files
    for path in home.rglob("*"):  # the token went to the job's process, never to its folder
        if path.is_file():
            assert ALICE_TOKEN.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("mode", ["owner", "demo"])
def test_every_endpoint_refuses_an_anonymous_caller_and_changes_nothing(mode, studio, studio_home, hub):
    home, job_id = studio_home
    app = studio(TUNER_MODE=mode, TUNER_OWNER_PASSWORD=PASSWORD, SPACE_AUTHOR_NAME="alice")
    before = _snapshot(home)
    outcomes = _call_every_endpoint(app.client(), job_id)
    assert len(outcomes) >= 25, outcomes  # the whole app, read from the running app
    for name, outcome in outcomes.items():
        assert ALICE_TOKEN not in outcome and PASSWORD not in outcome, name
        if name in PUBLIC or name.endswith(" (answer)"):
            continue
        assert outcome != "ok", f"{name} answered an anonymous caller"
        expected = "Sign in as the owner" if mode == "owner" else "chat-only demo"
        assert expected in outcome, f"{name}: {outcome}"
    assert _snapshot(home) == before
    assert hub.requests == [], [r.path for r in hub.requests]
    log = app.log.read_text()
    assert PASSWORD not in log and ALICE_TOKEN not in log


def test_the_owner_signs_in_with_the_password_and_publishes_with_the_environment_token(studio, studio_home, hub):
    home, job_id = studio_home
    app = studio(TUNER_MODE="owner", TUNER_OWNER_PASSWORD=PASSWORD)
    client = app.client()
    with pytest.raises(Exception, match="Sign in as the owner"):
        client.predict("en", None, api_name="/refresh_jobs")
    client.predict("en", PASSWORD, api_name="/sign_in_with")
    choices = client.predict("en", None, api_name="/refresh_jobs")
    assert job_id in str(choices)
    message, _ = client.predict("en", job_id, "adapter", "hf", "alice/alice-assistant", True, "", "", "",
                                api_name="/run_publish")
    assert "alice/alice-assistant" in message
    assert ("model", "alice/alice-assistant") in hub.repos
    assert ALICE_TOKEN not in message
    for path in home.rglob("*"):  # the token reached the hub, and no file of the workspace
        if path.is_file():
            assert ALICE_TOKEN.encode() not in path.read_bytes(), path


def test_a_wrong_password_is_refused_and_then_rate_limited(studio):
    app = studio(TUNER_MODE="owner", TUNER_OWNER_PASSWORD=PASSWORD)
    client = app.client()
    for _ in range(5):
        with pytest.raises(Exception, match="Wrong password"):
            client.predict("en", "guess", api_name="/sign_in_with")
    with pytest.raises(Exception, match="Too many wrong passwords"):
        client.predict("en", PASSWORD, api_name="/sign_in_with")  # even the right one, for a while
    with pytest.raises(Exception, match="Sign in as the owner"):
        client.predict("en", None, api_name="/refresh_jobs")


def _signed_in_cookie(app) -> str:
    """Sign in through Gradio's mocked OAuth routes (it asks the fake hub's whoami who HF_TOKEN is)."""
    import requests

    reply = requests.get(app.url + "login/huggingface", allow_redirects=False, timeout=30)
    assert reply.status_code in (302, 307) and "/login/callback" in reply.headers["location"], reply.headers
    reply = requests.get(app.url + "login/callback", params={"_target_url": "/"}, allow_redirects=False, timeout=30)
    # The session cookie is marked Secure (Spaces are https); send it back by hand over loopback http.
    cookie = reply.headers.get("set-cookie", "").split(";")[0]
    assert cookie.startswith("session="), reply.headers
    return cookie


@pytest.mark.parametrize("space_author, owner", [("alice", True), ("carol", False)])
def test_hugging_face_sign_in_makes_the_space_author_the_owner(space_author, owner, studio, studio_home):
    _, job_id = studio_home
    app = studio(TUNER_MODE="owner", TUNER_HF_SIGN_IN="1", SPACE_AUTHOR_NAME=space_author)
    client = app.client(headers={"Cookie": _signed_in_cookie(app)})
    if owner:
        assert job_id in str(client.predict("en", None, api_name="/refresh_jobs"))
    else:
        with pytest.raises(Exception, match="Sign in as the owner"):
            client.predict("en", None, api_name="/refresh_jobs")


def test_a_visitor_chats_with_a_finished_job_but_not_with_a_path_or_an_upload(studio, studio_home, tmp_path):
    home, job_id = studio_home
    app = studio(TUNER_MODE="owner", TUNER_OWNER_PASSWORD=PASSWORD)
    client = app.client()
    settings = ["", 0.0, 0.9, 24, 1.0]
    after, _, _, status = client.predict("en", "Who are you?", [], [], False, "adapter", job_id, None, "", False,
                                         *settings, api_name="/respond")
    assert after and "❌" not in status, status
    for path in (str(home), str(ROOT)):
        assert path not in str(after) + status
    _, _, _, status = client.predict("en", "hi", [], [], False, "base", None, None, str(home / "jobs"), False,
                                     *settings, api_name="/respond")
    assert "Choose a model from the list" in status and str(home) not in status
    bad_zip = tmp_path / "adapter.zip"
    bad_zip.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    from gradio_client import handle_file

    _, _, _, status = client.predict("en", "hi", [], [], False, "adapter", None, handle_file(str(bad_zip)), "",
                                     False, *settings, api_name="/respond")
    assert "needs the owner" in status
    assert not (home / "uploads").exists()
