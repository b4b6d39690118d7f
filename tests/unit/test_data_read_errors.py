import json

from tuner.data import read_data

GOOD = json.dumps({"conversation": [{"input": "q", "output": "a"}]})


def only_error(result):
    assert not result.ok
    assert len(result.errors) == 1, result.errors
    return result.errors[0]


def test_gbk_encoded_file_is_rejected_with_save_as_utf8(tmp_path):
    path = tmp_path / "gbk.jsonl"
    path.write_bytes(json.dumps({"conversation": [{"input": "你是谁", "output": "我是助手"}]},
                                ensure_ascii=False).encode("gbk"))

    error = only_error(read_data(path))

    assert error.line == 0
    assert "not UTF-8 text: save it as UTF-8" in error.message


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "model.json"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))

    assert "binary" in only_error(read_data(path)).message


def test_utf16_file_is_rejected_as_not_utf8(tmp_path):
    path = tmp_path / "utf16.jsonl"
    path.write_text(GOOD, encoding="utf-16")

    assert "not UTF-8" in only_error(read_data(path)).message


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \r\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert (error.line, error.message) == (0, "the file is empty")


def test_missing_file_is_an_error_not_an_exception(tmp_path):
    assert "not found" in only_error(read_data(tmp_path / "nope.jsonl")).message


def test_malformed_jsonl_line_names_file_line_and_reason(tmp_path):
    path = tmp_path / "cut.jsonl"
    path.write_text(f"{GOOD}\n\n{GOOD}\n{GOOD[:-7]}\n", encoding="utf-8")

    result = read_data(path)
    error = only_error(result)

    assert len(result.records) == 2
    assert (error.file, error.line) == (str(path), 4)
    assert error.message.startswith("not valid JSON: ")
    assert str(error).startswith(f"{path}:4: not valid JSON")


def test_truncated_json_array_names_the_line_where_it_breaks(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text("[\n" + GOOD + ",\n" + GOOD[:-5], encoding="utf-8")

    error = only_error(read_data(path))

    assert error.line == 3
    assert error.message.startswith("not valid JSON")


def test_number_where_text_belongs_names_the_field_path(tmp_path):
    path = tmp_path / "types.jsonl"
    bad = {"conversation": [{"input": "q", "output": "a"}, {"input": "q2", "output": 42}]}
    path.write_text(GOOD + "\n" + json.dumps(bad) + "\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert (error.line, error.field) == (2, "conversation[1].output")
    assert "must be text" in error.message


def test_openai_conversation_ending_with_user_is_rejected(tmp_path):
    path = tmp_path / "openai.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and then?"}]
    path.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert error.line == 1
    assert error.message == "the conversation ends without an assistant answer"


def test_openai_unknown_role_names_the_message(tmp_path):
    path = tmp_path / "openai.jsonl"
    messages = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "hello"}]
    path.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert error.field == "messages[1].role"
    assert "robot" in error.message


def test_sharegpt_answer_before_any_question_is_rejected(tmp_path):
    path = tmp_path / "sharegpt.jsonl"
    turns = [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "hi"}]
    path.write_text(json.dumps({"conversations": turns}) + "\n", encoding="utf-8")

    assert only_error(read_data(path)).field == "conversations[0].from"


def test_missing_output_is_reported_as_missing(tmp_path):
    path = tmp_path / "missing.jsonl"
    path.write_text(json.dumps({"conversation": [{"input": "q"}]}) + "\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert (error.field, error.message) == ("conversation[0].output", "missing")


def test_empty_answer_in_json_is_an_error(tmp_path):
    path = tmp_path / "blank.jsonl"
    path.write_text(json.dumps({"instruction": "q", "output": "  "}) + "\n", encoding="utf-8")

    assert only_error(read_data(path)).field == "output"


def test_unknown_format_lists_the_expected_ones_and_found_keys(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps({"prompt_text": "q", "completion": "a"}) + "\n", encoding="utf-8")

    error = only_error(read_data(path))

    assert error.message.startswith("could not tell the format: expected one of")
    assert "completion" in error.message and "prompt_text" in error.message


def test_line_that_is_not_an_object_is_rejected(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(GOOD + "\n" + "[1, 2]\n", encoding="utf-8")

    assert only_error(read_data(path)).line == 2


def test_empty_json_array_says_there_are_no_records(tmp_path):
    path = tmp_path / "none.json"
    path.write_text("[]", encoding="utf-8")

    assert "no records" in only_error(read_data(path)).message


def test_unknown_format_name_is_an_error(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text(GOOD, encoding="utf-8")

    assert "unknown format" in only_error(read_data(path, "csv")).message
