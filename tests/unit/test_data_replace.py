import json

import pytest

from tuner.data import DataFormatError, replace_text


def test_replace_walks_nested_json_and_keeps_keys(tmp_path):
    source = tmp_path / "in.json"
    data = [{"尖米": "我是尖米的小助手", "nested": {"list": ["尖米", 3, None, "other"]}}, {"x": "尖米尖米"}]
    source.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")

    changed = replace_text(source, tmp_path / "out.json", {"尖米": "Alice"})

    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert changed == 3
    assert out == [{"尖米": "我是Alice的小助手", "nested": {"list": ["Alice", 3, None, "other"]}}, {"x": "AliceAlice"}]


def test_replace_keeps_jsonl_as_jsonl_and_writes_utf8_unescaped(tmp_path):
    source = tmp_path / "in.jsonl"
    lines = [{"conversation": [{"input": "你是谁", "output": "我是尖米的小助手"}]}, {"conversation": []}]
    source.write_text("\r\n".join(json.dumps(x, ensure_ascii=False) for x in lines) + "\r\n\r\n", encoding="utf-8")

    changed = replace_text(source, tmp_path / "out.jsonl", {"尖米": "小明"})

    text = (tmp_path / "out.jsonl").read_text(encoding="utf-8")
    assert changed == 1
    assert text.splitlines()[0] == json.dumps(
        {"conversation": [{"input": "你是谁", "output": "我是小明的小助手"}]}, ensure_ascii=False)
    assert len(text.splitlines()) == 2


def test_replacements_apply_at_once_so_names_can_swap(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"t": "A and B"}) + "\n", encoding="utf-8")

    replace_text(source, source, {"A": "B", "B": "A"})

    assert json.loads(source.read_text(encoding="utf-8")) == {"t": "B and A"}


def test_malformed_jsonl_raises_data_format_error_with_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"a": "x"}\n{"a": \n', encoding="utf-8")

    with pytest.raises(DataFormatError) as raised:
        replace_text(source, tmp_path / "out.jsonl", {"x": "y"})

    assert [e.line for e in raised.value.errors] == [2]
    assert not (tmp_path / "out.jsonl").exists()


def test_non_utf8_input_raises_data_format_error(tmp_path):
    source = tmp_path / "gbk.json"
    source.write_bytes('{"a": "尖米"}'.encode("gbk"))

    with pytest.raises(DataFormatError, match="UTF-8"):
        replace_text(source, tmp_path / "out.json", {"尖米": "x"})


def test_empty_search_text_is_refused(tmp_path):
    source = tmp_path / "in.json"
    source.write_text("{}", encoding="utf-8")

    with pytest.raises(ValueError):
        replace_text(source, tmp_path / "out.json", {"": "x"})
