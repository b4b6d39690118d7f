"""The app as a person meets it: `python app.py` in its own process, driven by Debian's Chromium.

Screenshots go to $TUNER_SCREENSHOTS (default: test-artifacts/screenshots at the project root).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from app_process import ROOT, AppProcess
sys.path.insert(0, str(ROOT / "tests" / "deploy"))  # the fake Hugging Face Hub of the deploy tests

CHROMIUM = os.environ.get("TUNER_CHROMIUM", "/usr/bin/chromium")
# As root, in a closed network: no sandbox, and none of Chromium's own background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def screenshots() -> Path:
    folder = Path(os.environ.get("TUNER_SCREENSHOTS", ROOT / "test-artifacts" / "screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the end of its app's log (what the server said when the page did not)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if isinstance(value, AppProcess) and value.log.exists():
            report.sections.append((f"app.log ({value.url})", value.log.read_text(errors="replace")[-4000:]))
