"""Every text of the app exists in English and Chinese, and the browser's language picks the first one."""

import re
from pathlib import Path

import pytest

from deploy.hubs.base import ERROR_KINDS
from tuner.jobs import JobState
from ui.i18n import language_from_header, t
from ui.strings import STRINGS
from ui.train_tab import FIELDS

UI = Path(__file__).resolve().parents[2] / "ui"


def keys_used_in_code() -> set[str]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in UI.glob("*.py") if p.name != "strings.py")
    literal = set(re.findall(r"""(?:_key=|\bt\(|\(\s*)["']([a-z]+\.[a-z_.]+)["']""", text))
    dynamic = {f"state.{s.value}" for s in JobState} | {f"publish.error.{k}" for k in ERROR_KINDS}
    dynamic |= {f"spec.{f}" for f in FIELDS} | {f"spec.{f}.info" for f in FIELDS}
    return {k for k in literal if not k.startswith("tuner.") and not k.endswith(".py")} | dynamic


def test_every_key_the_code_uses_has_both_languages():
    missing = sorted(k for k in keys_used_in_code() if k not in STRINGS)
    assert not missing
    untranslated = sorted(k for k, (en, zh) in STRINGS.items() if not en or not zh)
    assert not untranslated


def test_placeholders_are_the_same_in_both_languages():
    for key, (en, zh) in STRINGS.items():
        assert set(re.findall(r"{(\w+)", en)) == set(re.findall(r"{(\w+)", zh)), key


def test_the_app_builds_with_every_label_translated():
    import app

    blocks = app.build_app()
    assert len(blocks.blocks) > 100


@pytest.mark.parametrize("header, language", [
    ("zh-CN,zh;q=0.9,en;q=0.8", "zh"),
    ("en-US,en;q=0.9,zh-CN;q=0.8", "en"),
    ("zh-TW", "zh"),
    ("fr-FR,fr;q=0.9", "en"),
    ("", "en"),
    ("en;q=0.5,zh;q=0.7", "zh"),
])
def test_the_browser_language_chooses_chinese_or_english(header, language):
    assert language_from_header(header) == language


def test_a_message_is_filled_in_the_chosen_language():
    assert t("train.queued", "zh", position=2) == "等待空闲设备：排在第 2 位。"
    assert t("train.queued", "en", position=2) == "Waiting for a free device: number 2 in line."
