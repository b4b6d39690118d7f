"""Question/answer tables (CSV, XLSX, XLS) → conversations, one per row.

Row numbers are spreadsheet rows: the header is row 1 and the first data row is row 2.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from pathlib import Path
from typing import Any, Iterator

from tuner.data.records import Conversation, DataError, ReadResult, Turn
from tuner.data.text_file import UTF8_HINT, read_text

TABLE_EXTENSIONS = (".csv", ".tsv", ".xlsx", ".xlsm", ".xls")
COLUMN_GUESSES = {
    "input": ("question", "问题", "instruction", "prompt", "input", "query", "提问"),
    "output": ("answer", "答案", "output", "response", "回答", "reply"),
    "system": ("system", "系统"),
}
ROLES = tuple(COLUMN_GUESSES)


def is_table_path(path: Path) -> bool:
    return path.suffix.lower() in TABLE_EXTENSIONS


def table_headers(path: Path) -> list[str]:
    """The column names of a table (its first non-blank row); empty when it cannot be read."""
    rows, error = _load_rows(Path(path))
    if error:
        return []
    return next((row for _, row in rows if any(cell for cell in row)), [])


def read_table(path: Path, column_map: dict | None = None) -> ReadResult:
    result = ReadResult(path=str(path), format="table")
    rows, error = _load_rows(path)
    if error:
        result.errors.append(error)
        return result
    numbered = [(number, row) for number, row in rows if any(cell for cell in row)]
    if not numbered:
        result.errors.append(DataError(str(path), 0, "", "the file is empty"))
        return result
    (_, header), body = numbered[0], numbered[1:]
    columns, error = _choose_columns(str(path), header, column_map)
    if error:
        result.errors.append(error)
        return result
    for number, row in body:
        _read_row(result, header, columns, number, row)
    if not result.records and not result.skipped:
        result.errors.append(DataError(str(path), 0, "", "no data rows below the header"))
    return result


def _read_row(result: ReadResult, header: list[str], columns: dict[str, list[int]], number: int,
              row: list[str]) -> None:
    def cell(index: int) -> str:
        return row[index] if index < len(row) else ""

    question = "\n".join(cell(i) for i in columns["input"] if cell(i))
    answer = cell(columns["output"][0])
    system = cell(columns["system"][0]) if columns["system"] else ""
    if not question:
        column = header[columns["input"][0]]
        result.skipped.append(DataError(result.path, number, column, "empty question: row skipped"))
    elif not answer:
        column = header[columns["output"][0]]
        result.skipped.append(DataError(result.path, number, column, "empty answer: row skipped"))
    else:
        result.records.append(Conversation([Turn(question, answer, system)], source=result.path, line=number))


def _choose_columns(file: str, header: list[str], column_map: dict | None
                    ) -> tuple[dict[str, list[int]], DataError | None]:
    """Column indexes for input (one, or instruction+input), output and system (zero or one).

    A role missing from column_map, or mapped to None, is guessed from the headers.
    """
    column_map = column_map or {}
    unknown = [key for key in column_map if key not in ROLES]
    if unknown:
        return {}, DataError(file, 0, "", f"unknown column mapping key(s) {', '.join(unknown)}: "
                                          f"expected {', '.join(ROLES)}")
    lowered = [name.strip().lower() for name in header]
    columns: dict[str, list[int]] = {}
    for role in ROLES:
        wanted = column_map.get(role)
        if wanted:
            if wanted not in header:
                return {}, DataError(file, 1, "", f"no column named {wanted!r} for {role}; the headers are: "
                                                  f"{_header_list(header)}")
            columns[role] = [header.index(wanted)]
        else:
            columns[role] = _guess_column(role, lowered)
    missing = [name for role, name in (("input", "question"), ("output", "answer")) if not columns[role]]
    if missing:
        return {}, DataError(file, 1, "", f"could not tell which column holds the {' and the '.join(missing)}; "
                                          f"the headers are: {_header_list(header)}. Give a column mapping "
                                          "(e.g. input='Question', output='Answer')")
    return columns, None


def _guess_column(role: str, lowered: list[str]) -> list[int]:
    if role == "input" and "instruction" in lowered and "input" in lowered:
        return [lowered.index("instruction"), lowered.index("input")]
    for name in COLUMN_GUESSES[role]:
        if name in lowered:
            return [lowered.index(name)]
    return []


def _header_list(header: list[str]) -> str:
    return ", ".join(repr(name) for name in header if name) or "(none)"


def _load_rows(path: Path) -> tuple[list[tuple[int, list[str]]], DataError | None]:
    suffix = path.suffix.lower()
    if not path.is_file():
        return [], DataError(str(path), 0, "", "file not found")
    if suffix in (".csv", ".tsv"):
        return _csv_rows(path, "\t" if suffix == ".tsv" else None)
    if suffix == ".xls":
        return _xls_rows(path)
    return _xlsx_rows(path)


def _csv_rows(path: Path, delimiter: str | None) -> tuple[list[tuple[int, list[str]]], DataError | None]:
    text, error = read_text(path)
    if error:
        if error.message.startswith(UTF8_HINT):
            error.message += " (in Excel: Save As → CSV UTF-8)"
        return [], error
    if delimiter is None:
        delimiter = _header_delimiter(text)
    try:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        return [(number, [_cell_text(cell) for cell in row]) for number, row in enumerate(reader, start=1)], None
    except csv.Error as error:
        return [], DataError(str(path), 0, "", f"not a valid CSV file: {error}")


def _header_delimiter(text: str) -> str:
    """The header line's most used of , ; and tab (free text in the rows below would mislead a sniffer)."""
    first = text.lstrip("\r\n").split("\n", 1)[0]
    counts = {d: first.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _xlsx_rows(path: Path) -> tuple[list[tuple[int, list[str]]], DataError | None]:
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as error:  # noqa: BLE001 - openpyxl raises many kinds for a damaged file
        return [], DataError(str(path), 0, "", f"could not read the spreadsheet: {error}")
    try:
        sheet = workbook.worksheets[0]
        rows = [(number, [_cell_text(v) for v in row])
                for number, row in enumerate(sheet.iter_rows(values_only=True), start=1)]
    finally:
        workbook.close()
    return rows, None


def _xls_rows(path: Path) -> tuple[list[tuple[int, list[str]]], DataError | None]:
    import pandas as pd

    try:
        frame = pd.read_excel(path, header=None, dtype=object)
    except ImportError:
        return [], DataError(str(path), 0, "", "reading old .xls files needs the xlrd package: "
                                               "save it as .xlsx or CSV UTF-8")
    except Exception as error:  # noqa: BLE001
        return [], DataError(str(path), 0, "", f"could not read the spreadsheet: {error}")
    return [(index + 1, [_cell_text(v) for v in row]) for index, row in enumerate(_frame_rows(frame))], None


def _frame_rows(frame: Any) -> Iterator[list[Any]]:
    for values in frame.itertuples(index=False, name=None):
        yield [None if _is_missing(v) else v for v in values]


def _is_missing(value: Any) -> bool:
    return isinstance(value, float) and value != value  # NaN


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime) and value.time() == dt.time():
        return value.date().isoformat()
    return str(value).replace("\r\n", "\n").strip()
