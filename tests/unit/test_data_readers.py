import json

import pytest

from tuner.data import FORMATS, Turn, detect_format, read_data


def write_jsonl(path, objects):
    path.write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in objects), encoding="utf-8")
    return path


XTUNER = {"conversation": [
    {"system": "You are a doctor.", "input": "Headache?", "output": "Rest and drink water."},
    {"input": "And if it stays?", "output": "See a doctor."},
]}
OPENAI = {"messages": [
    {"role": "system", "content": "You are a doctor."},
    {"role": "user", "content": "Headache?"},
    {"role": "assistant", "content": "Rest and drink water."},
    {"role": "user", "content": "And if it stays?"},
    {"role": "assistant", "content": "See a doctor."},
]}
SHAREGPT = {"conversations": [
    {"from": "system", "value": "You are a doctor."},
    {"from": "human", "value": "Headache?"},
    {"from": "gpt", "value": "Rest and drink water."},
    {"from": "human", "value": "And if it stays?"},
    {"from": "gpt", "value": "See a doctor."},
]}
EXPECTED_TURNS = [Turn("Headache?", "Rest and drink water.", "You are a doctor."),
                  Turn("And if it stays?", "See a doctor.")]


@pytest.mark.parametrize(("fmt", "record"), [("xtuner", XTUNER), ("openai", OPENAI), ("sharegpt", SHAREGPT)])
def test_multi_turn_conversation_with_system_is_read_in_each_format(tmp_path, fmt, record):
    path = write_jsonl(tmp_path / f"{fmt}.jsonl", [record, record])

    result = read_data(path)

    assert result.ok, result.errors
    assert result.format == fmt
    assert [r.turns for r in result.records] == [EXPECTED_TURNS, EXPECTED_TURNS]
    assert [r.line for r in result.records] == [1, 2]


def test_alpaca_joins_instruction_and_input_and_takes_system(tmp_path):
    path = write_jsonl(tmp_path / "alpaca.jsonl", [
        {"instruction": "Translate to French", "input": "cat", "output": "chat", "system": "You translate."},
        {"instruction": "Say hi", "output": "hi"},
    ])

    result = read_data(path)

    assert result.ok, result.errors
    assert result.format == "alpaca"
    assert result.records[0].turns == [Turn("Translate to French\ncat", "chat", "You translate.")]
    assert result.records[1].turns == [Turn("Say hi", "hi")]


def test_json_array_records_are_numbered_by_index_plus_one(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([XTUNER, {"conversation": [{"input": "q", "output": 5}]}], indent=2), encoding="utf-8")

    result = read_data(path)

    assert len(result.records) == 1
    assert [(e.line, e.field) for e in result.errors] == [(2, "conversation[0].output")]


def test_json_file_holding_jsonl_is_read_as_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "data.json", [XTUNER, OPENAI])

    result = read_data(path, "xtuner")

    assert len(result.records) == 1
    assert result.errors[0].line == 2


def test_utf8_bom_crlf_and_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    lines = [json.dumps({"conversation": [{"input": "你是谁？", "output": "我是小助手。"}]}, ensure_ascii=False)] * 2
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n\r\n".join(lines) + "\r\n").encode("utf-8"))

    result = read_data(path)

    assert result.ok, result.errors
    assert [r.turns[0].input for r in result.records] == ["你是谁？", "你是谁？"]
    assert [r.line for r in result.records] == [1, 3]


def test_openai_content_given_as_text_parts_is_joined(tmp_path):
    path = write_jsonl(tmp_path / "parts.jsonl", [{"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]},
        {"role": "assistant", "content": "Hi"},
    ]}])

    assert read_data(path).records[0].turns == [Turn("Hello", "Hi")]


def test_detect_format_tells_each_json_format_and_tables(tmp_path):
    samples = {"xtuner": XTUNER, "openai": OPENAI, "sharegpt": SHAREGPT,
               "alpaca": {"instruction": "a", "output": "b"}}
    for fmt, record in samples.items():
        assert detect_format(write_jsonl(tmp_path / f"{fmt}.jsonl", [record])) == fmt
    assert detect_format(tmp_path / "qa.xlsx") == "table"
    assert detect_format(write_jsonl(tmp_path / "other.jsonl", [{"text": "x"}])) is None


def test_explicit_format_overrides_detection_and_reports_missing_fields(tmp_path):
    path = write_jsonl(tmp_path / "openai.jsonl", [OPENAI])

    result = read_data(path, "alpaca")

    assert result.format == "alpaca"
    assert {e.field for e in result.errors} == {"instruction", "output"}
    assert all(e.message == "missing" for e in result.errors)


def test_formats_lists_the_five_supported_formats():
    assert FORMATS == ("xtuner", "openai", "alpaca", "sharegpt", "table")


def test_record_in_another_format_than_the_first_ones_is_named(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [XTUNER, OPENAI])

    result = read_data(path)

    assert len(result.records) == 1
    assert [(e.line, e.field) for e in result.errors] == [(2, "")]
    assert "openai" in result.errors[0].message and "xtuner" in result.errors[0].message
