import csv

import openpyxl
import pytest

from tuner.data import Turn, read_data


def write_csv(path, rows, encoding="utf-8"):
    with path.open("w", encoding=encoding, newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def write_xlsx(path, rows):
    workbook = openpyxl.Workbook()
    for row in rows:
        workbook.active.append(row)
    workbook.save(path)
    return path


WRITERS = {"csv": write_csv, "xlsx": write_xlsx}
MEDQA = [
    ["Question", "Answer"],
    ["What lowers fever?", "Paracetamol."],
    ["Is this empty?", None],
    ["What is BP?", "Blood pressure."],
]


@pytest.mark.parametrize("kind", WRITERS)
def test_question_answer_table_is_read_with_guessed_columns(tmp_path, kind):
    path = WRITERS[kind](tmp_path / f"medqa.{kind}", MEDQA)

    result = read_data(path)

    assert result.ok, result.errors
    assert result.format == "table"
    assert [r.turns for r in result.records] == [[Turn("What lowers fever?", "Paracetamol.")],
                                                 [Turn("What is BP?", "Blood pressure.")]]
    assert [r.line for r in result.records] == [2, 4]


@pytest.mark.parametrize("kind", WRITERS)
def test_empty_answer_row_is_skipped_with_its_row_number(tmp_path, kind):
    path = WRITERS[kind](tmp_path / f"medqa.{kind}", MEDQA)

    skipped = read_data(path).skipped

    assert [(s.line, s.field, s.message) for s in skipped] == [(3, "Answer", "empty answer: row skipped")]
    assert str(skipped[0]) == f"{path}:3: Answer: empty answer: row skipped"


@pytest.mark.parametrize("kind", WRITERS)
def test_chinese_headers_are_guessed(tmp_path, kind):
    path = WRITERS[kind](tmp_path / f"zh.{kind}", [["问题", "答案"], ["你是谁？", "我是小助手。"], ["", "孤单的答案"]])

    result = read_data(path)

    assert [r.turns for r in result.records] == [[Turn("你是谁？", "我是小助手。")]]
    assert [(s.line, s.message) for s in result.skipped] == [(3, "empty question: row skipped")]


def test_explicit_column_map_picks_columns_and_system(tmp_path):
    rows = [["id", "Frage", "Antwort", "Rolle"], ["1", "Wer bist du?", "Ein Assistent.", "Sei nett."]]
    path = write_xlsx(tmp_path / "de.xlsx", rows)

    result = read_data(path, column_map={"input": "Frage", "output": "Antwort", "system": "Rolle"})

    assert result.records[0].turns == [Turn("Wer bist du?", "Ein Assistent.", "Sei nett.")]


def test_column_map_naming_a_missing_column_lists_the_headers(tmp_path):
    path = write_csv(tmp_path / "qa.csv", [["Question", "Answer"], ["q", "a"]])

    result = read_data(path, column_map={"input": "Frage", "output": "Answer"})

    assert len(result.errors) == 1
    assert "'Frage'" in result.errors[0].message and "'Question'" in result.errors[0].message


def test_unguessable_headers_give_one_error_asking_for_a_mapping(tmp_path):
    path = write_csv(tmp_path / "odd.csv", [["foo", "bar"], ["q", "a"]])

    result = read_data(path)

    assert not result.ok
    assert len(result.errors) == 1
    assert "'foo', 'bar'" in result.errors[0].message
    assert "column mapping" in result.errors[0].message


def test_alpaca_style_table_joins_instruction_and_input(tmp_path):
    path = write_csv(tmp_path / "alpaca.csv", [["instruction", "input", "output"],
                                               ["Translate", "cat", "chat"], ["Say hi", "", "hi"]])

    result = read_data(path)

    assert [r.turns[0].input for r in result.records] == ["Translate\ncat", "Say hi"]


def test_headers_match_case_insensitively_and_numbers_become_text(tmp_path):
    path = write_xlsx(tmp_path / "nums.xlsx", [["QUESTION", "ANSWER"], ["2+2?", 4]])

    assert read_data(path).records[0].turns == [Turn("2+2?", "4")]


def test_csv_with_semicolons_bom_and_crlf_inside_cells(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbf" + 'Question;Answer\r\n"a; b?";"line 1\r\nline 2"\r\n'.encode("utf-8"))

    result = read_data(path)

    assert result.ok, result.errors
    assert result.records[0].turns == [Turn("a; b?", "line 1\nline 2")]


def test_gbk_csv_is_rejected_with_save_as_utf8(tmp_path):
    path = write_csv(tmp_path / "gbk.csv", [["问题", "答案"], ["你是谁", "助手"]], encoding="gbk")

    result = read_data(path)

    assert len(result.errors) == 1
    assert "not UTF-8 text: save it as UTF-8" in result.errors[0].message


def test_header_only_table_says_there_are_no_rows(tmp_path):
    path = write_csv(tmp_path / "head.csv", [["Question", "Answer"]])

    assert "no data rows" in read_data(path).errors[0].message


def test_damaged_xlsx_is_an_error_not_an_exception(tmp_path):
    path = tmp_path / "broken.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a zip")

    result = read_data(path)

    assert len(result.errors) == 1
    assert "could not read the spreadsheet" in result.errors[0].message


def test_asking_for_a_json_format_on_a_table_is_an_error(tmp_path):
    path = write_csv(tmp_path / "qa.csv", [["Question", "Answer"], ["q", "a"]])

    assert not read_data(path, "xtuner").ok
