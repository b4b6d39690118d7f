"""What a visitor and the owner see on a shared studio (owner mode, password sign-in), in Chromium."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from app_process import ROOT, AppProcess

pytestmark = pytest.mark.integration
PASSWORD = "owner-password-for-the-browser-test"


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory):
    import os

    saved = {name: os.environ.get(name) for name in ("TUNER_MODE", "TUNER_OWNER_PASSWORD")}
    os.environ.update(TUNER_MODE="owner", TUNER_OWNER_PASSWORD=PASSWORD)
    try:
        process = AppProcess(tmp_path_factory.mktemp("shared-home")).start()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    yield process
    process.stop()


def test_a_visitor_sees_chat_only_and_no_server_path_then_the_owner_signs_in(shared_app, page_for, screenshots):
    page = page_for(shared_app)
    expect(page.locator("#tab-chat-button")).to_be_visible()
    for hidden in ("data", "train", "publish"):
        expect(page.locator(f"#tab-{hidden}-button")).to_have_count(0)
    expect(page.locator("#tuner-where")).to_contain_text("you are a visitor")
    expect(page.locator("#chat-send")).to_be_visible()  # the chat is open for the visitor
    page.screenshot(path=str(screenshots / "visitor.png"), full_page=True)
    text = page.locator("body").inner_text()
    for path in (str(shared_app.home), str(ROOT), "/root", "/tmp"):
        assert path not in text, path

    page.locator("#tuner-password input").fill("wrong")
    page.locator("#tuner-sign-in").click()
    expect(page.locator("#tuner-auth-message")).to_contain_text("Wrong password.", timeout=15_000)  # stays put
    page.screenshot(path=str(screenshots / "wrong-password.png"))
    expect(page.locator("#tab-data-button")).to_have_count(0)

    page.locator("#tuner-password input").fill(PASSWORD)
    page.locator("#tuner-sign-in").click()
    expect(page.locator("#tab-data-button")).to_be_visible(timeout=15_000)
    expect(page.locator("#tab-train-button")).to_be_visible()
    expect(page.locator("#tuner-where")).to_contain_text("signed in as the owner")
    expect(page.locator("#tuner-auth-message")).not_to_contain_text("Wrong password.")  # the refusal is gone
    page.screenshot(path=str(screenshots / "owner-signed-in.png"), full_page=True)
