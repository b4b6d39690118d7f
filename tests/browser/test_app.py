"""A person's path through the app, in headless Chromium, on the embedded default model (real XTuner)."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import Page, expect

from hf_server import HubServer
from hub_accounts import ALICE_TOKEN

pytestmark = pytest.mark.integration

TRAINING_MINUTES = 20


def open_tab(page: Page, name: str) -> None:
    """Click the tab until it is the selected one, and stays so for 3 s: a click made while the page is still
    loading can be undone when the load ends, Gradio 6.17 selecting the first tab again (reproduced with the page's
    load held back 4 s; seen in CI after a reload on a machine busy training). The timer that caused it on every
    load now starts with the load (ui/train_tab.py); a slow load still can."""
    button = page.locator(f"#tab-{name}-button")
    for attempt in range(4):
        button.click()
        try:
            expect(button).to_have_attribute("aria-selected", "true", timeout=10_000)
            page.wait_for_timeout(3000)
            expect(button).to_have_attribute("aria-selected", "true", timeout=100)
            break
        except AssertionError:
            if attempt == 3:
                raise


def textbox(page: Page, elem_id: str):
    return page.locator(f"#{elem_id}").locator("textarea, input").first


def test_a_malformed_file_is_reported_with_its_line_and_field_and_the_data_so_far_is_kept(app, page_for, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"conversation": [{"input": "hi", "output": "hello"}]}\n'
                   '{"conversation": [{"input": "who?", "output": 3}]}\n', encoding="utf-8")
    page = page_for(app)
    textbox(page, "data-name").fill("Bob")
    page.locator("#data-generate").click()
    expect(page.locator("#data-summary")).to_contain_text("160 self-cognition examples", timeout=60_000)
    page.locator("#data-file input[type=file]").set_input_files(str(bad))
    page.locator("#data-check").click()
    message = page.locator("#data-message")
    expect(message).to_contain_text("bad.jsonl:2", timeout=30_000)
    expect(message).to_contain_text("output")
    expect(message).to_contain_text("nothing was added")
    expect(page.locator("#data-summary")).to_have_text("160 self-cognition examples")


def test_a_chinese_browser_gets_the_chinese_page_and_can_switch_to_english(app, page_for, screenshots):
    page = page_for(app, "zh-CN")
    expect(page.locator("#tab-data-button")).to_have_text("1 · 数据")
    expect(page.locator("#data-generate")).to_have_text("生成")
    page.screenshot(path=str(screenshots / "zh-data.png"), full_page=True)
    page.locator("#tuner-language").get_by_text("English").click()
    expect(page.locator("#tab-data-button")).to_have_text("1 · Data")
    expect(page.locator("#data-generate")).to_have_text("Generate")


def test_from_nothing_to_chatting_with_alices_assistant_and_publishing_it(app, page_for, screenshots):
    page = page_for(app)

    # Data: self-cognition for Alice, saved as a data set
    textbox(page, "data-name").fill("Alice")
    page.locator("#data-generate").click()
    expect(page.locator("#data-summary")).to_contain_text("160 self-cognition examples", timeout=60_000)
    expect(page.locator("#data-stats")).to_contain_text("160", timeout=60_000)
    expect(page.locator("#data-preview")).to_contain_text("Alice")
    expect(page.locator("#data-histogram svg .mark-rect path").first).to_be_attached(timeout=30_000)
    expect(textbox(page, "data-dataset-name")).to_have_value("alice-assistant")
    page.locator("#data-save").click()
    expect(page.locator("#data-message")).to_contain_text("Saved data set", timeout=30_000)
    page.screenshot(path=str(screenshots / "1-data.png"), full_page=True)

    # Fine-tune: the saved data set is chosen; see the command; start
    open_tab(page, "train")
    expect(page.locator("#train-dataset input")).to_have_value("alice-assistant")
    page.locator("#spec-max_epochs input").fill("2")
    page.locator("#train-preview").click()
    expect(page.locator("#train-message")).to_contain_text("Estimate", timeout=60_000)
    expect(textbox(page, "train-command")).to_have_value(re.compile(r"xtuner train config\.py"))
    started = time.time()
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started job", timeout=60_000)
    job_id = re.search(r"Started job (\S+)\.", page.locator("#train-message").inner_text()).group(1)

    # Progress and the loss curve, live
    expect(page.locator("#train-progress")).to_contain_text(re.compile(r"\d+/\d+"), timeout=180_000)
    expect(page.locator("#train-loss svg .mark-line path").first).to_be_attached(timeout=60_000)
    page.screenshot(path=str(screenshots / "2-fine-tune-running.png"), full_page=True)

    # A second training waits for the device, with its place in line; cancel it
    page.locator("#train-start").click()
    expect(page.locator("#train-message")).to_contain_text("Started job", timeout=60_000)
    expect(page.locator("#train-status")).to_contain_text("number 1 in line", timeout=30_000)
    page.locator("#train-cancel").click()
    expect(page.locator("#train-status")).to_contain_text("cancelled", timeout=60_000)

    # Reload mid-training: the job is still there, still running
    page.reload()
    page.wait_for_selector("#tab-train-button")
    open_tab(page, "train")
    expect(page.locator("#train-job input")).to_be_visible(timeout=90_000)  # a loaded machine redraws slowly
    page.locator("#train-job input").click()
    page.get_by_role("option", name=job_id).click()
    expect(page.locator("#train-status")).to_contain_text(job_id, timeout=30_000)
    expect(page.locator("#train-status")).to_contain_text(re.compile("running|converting|finished"))

    # The end: adapter converted without another click; sample answers shown
    expect(page.locator("#train-status")).to_contain_text("Adapter ready", timeout=TRAINING_MINUTES * 60_000)
    expect(page.locator("#train-samples")).to_contain_text("After")
    page.screenshot(path=str(screenshots / "2-fine-tune-done.png"), full_page=True)

    # Chat: before / after, side by side
    open_tab(page, "chat")
    expect(page.locator("#chat-job input")).to_have_value(job_id)
    textbox(page, "chat-message").fill("Who are you?")
    page.locator("#chat-send").click()
    expect(page.locator("#chat-after")).to_contain_text("Alice", timeout=180_000)
    first_answer = time.time() - started
    expect(page.locator("#chat-before .message").nth(1)).not_to_be_empty(timeout=120_000)
    page.wait_for_timeout(3000)
    assert "Alice" not in page.locator("#chat-before").inner_text()
    page.screenshot(path=str(screenshots / "3-chat-before-after.png"), full_page=True)
    (screenshots / "timing.txt").write_text(f"Start to first answer naming Alice: {first_answer:.0f} s\n")
    print(f"\nStart to first answer naming Alice: {first_answer:.0f} s")

    # Publish the adapter to a hub (a local server speaking the Hugging Face API)
    with HubServer() as hub:
        hub.add_user("alice", ALICE_TOKEN)
        open_tab(page, "publish")
        expect(page.locator("#publish-job input")).to_have_value(job_id)
        textbox(page, "publish-repo").fill("alice/alice-assistant")
        page.locator("#publish-token input").fill(ALICE_TOKEN)
        page.get_by_text("Endpoint (mirrors, self-hosted hubs)").click()
        textbox(page, "publish-endpoint").fill(hub.url)
        page.locator("#publish-go").click()
        message = page.locator("#publish-message")
        expect(message).to_contain_text("Published to Hugging Face", timeout=120_000)
        expect(message.get_by_role("link")).to_have_attribute("href", f"{hub.url}/alice/alice-assistant")
        files = hub.repo("alice/alice-assistant").files
        assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(files)
        assert ALICE_TOKEN not in page.content()
        expect(textbox(page, "publish-model-repo")).to_have_value("alice/alice-assistant")
        page.screenshot(path=str(screenshots / "4-publish.png"), full_page=True)


def test_the_job_list_survives_an_app_restart(app, page_for):
    app.restart()
    page = page_for(app)
    open_tab(page, "train")
    page.locator("#train-job input").click()
    options = page.get_by_role("option")
    expect(options).to_have_count(2)  # Alice's job and the cancelled one
    options.filter(has_text="alice").last.click()  # newest first: the last is the first job
    expect(page.locator("#train-status")).to_contain_text("finished", timeout=30_000)
    expect(page.locator("#train-loss svg .mark-line path").first).to_be_attached(timeout=30_000)
