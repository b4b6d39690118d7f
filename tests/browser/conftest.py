"""The app as a person meets it: `python app.py` in its own process, driven by Debian's Chromium.

Screenshots go to $TUNER_SCREENSHOTS (default: test-artifacts/screenshots at the project root).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))  # the fake Hugging Face Hub of the deploy tests

CHROMIUM = os.environ.get("TUNER_CHROMIUM", "/usr/bin/chromium")
# As root, in a closed network: no sandbox, and none of Chromium's own background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("TUNER_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class AppProcess:
    def __init__(self, home: Path):
        self.home = home
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / "app.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> "AppProcess":
        env = dict(os.environ, TUNER_HOME=str(self.home), GRADIO_SERVER_PORT=str(self.port),
                   GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        with self.log.open("a") as log:
            self.process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"app.py exited: {self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url, timeout=2)
                return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"app.py did not answer in 120 s: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    process = AppProcess(tmp_path_factory.mktemp("app-home")).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page_for(browser):
    """page_for(app, locale) opens the app in a fresh browser context with that language."""
    contexts = []

    def open_page(app: AppProcess, locale: str = "en-US"):
        context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale=locale)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(app.url)
        page.wait_for_selector("#tab-data-button, [role=tab]")
        page.wait_for_timeout(1500)  # the load event sets the language and the job list
        return page

    yield open_page
    for context in contexts:
        context.close()
