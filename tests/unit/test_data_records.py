from tuner.data import Conversation, DataError, DataFormatError, ReadResult, Turn


def test_to_xtuner_puts_system_only_on_turns_that_have_one():
    conversation = Conversation([Turn("hi", "hello", "be brief"), Turn("and?", "done")])

    assert conversation.to_xtuner() == {"conversation": [
        {"system": "be brief", "input": "hi", "output": "hello"},
        {"input": "and?", "output": "done"},
    ]}


def test_from_xtuner_reverses_to_xtuner():
    conversation = Conversation([Turn("q1", "a1", "sys"), Turn("q2", "a2")])

    assert Conversation.from_xtuner(conversation.to_xtuner()).turns == conversation.turns


def test_data_error_reads_file_line_field_message():
    assert str(DataError("a.jsonl", 3, "conversation[0].output", "must be text")) == \
        "a.jsonl:3: conversation[0].output: must be text"


def test_data_error_without_field_leaves_it_out():
    assert str(DataError("a.jsonl", 0, "", "the file is empty")) == "a.jsonl:0: the file is empty"


def test_data_format_error_carries_its_errors_and_shows_them():
    errors = [DataError("a.jsonl", 2, "", "not valid JSON: x")]

    raised = DataFormatError(errors)

    assert raised.errors == errors
    assert "a.jsonl:2" in str(raised)


def test_read_result_is_ok_only_with_records_and_no_errors():
    record = Conversation([Turn("q", "a")])

    assert ReadResult("f", "xtuner", [record], [], []).ok
    assert not ReadResult("f", "xtuner", [], [], []).ok
    assert not ReadResult("f", "xtuner", [record], [DataError("f", 1, "", "bad")], []).ok
