"""Read any supported data file into conversations, collecting every problem instead of raising."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

from tuner.data.formats import PARSERS, guess_record_format
from tuner.data.records import DataError, ReadResult
from tuner.data.tables import TABLE_EXTENSIONS, is_table_path, read_table
from tuner.data.text_file import read_text, split_lines

FORMATS = ("xtuner", "openai", "alpaca", "sharegpt", "table")
FORMAT_HINT = ("xtuner ({\"conversation\": [{\"input\", \"output\"}]}), openai ({\"messages\": [{\"role\", "
               "\"content\"}]}), alpaca ({\"instruction\", \"input\", \"output\"}), sharegpt ({\"conversations\": "
               "[{\"from\", \"value\"}]}) or a table (.csv/.xlsx with question and answer columns)")

# (line number, decoded object) for each record of a JSON or JSONL file
Numbered = list[tuple[int, Any]]


def read_data(path: str | PathLike, fmt: str | None = None, column_map: dict | None = None) -> ReadResult:
    path = Path(path)
    file = str(path)
    if fmt is not None and fmt not in FORMATS:
        return ReadResult(file, "", errors=[DataError(file, 0, "", f"unknown format {fmt!r}: expected one of "
                                                                   f"{', '.join(FORMATS)}")])
    if is_table_path(path):
        if fmt not in (None, "table"):
            return ReadResult(file, fmt, errors=[DataError(file, 0, "", f"a {path.suffix} file is read as a "
                                                                        "table, not as " + fmt)])
        return read_table(path, column_map)
    if fmt == "table":
        return ReadResult(file, fmt, errors=[DataError(file, 0, "", "a table must be a file ending in "
                                                                    + ", ".join(TABLE_EXTENSIONS))])
    objects, errors = _load_json_records(path)
    result = ReadResult(file, fmt or "", errors=errors)
    if not objects:
        if not errors:
            result.errors.append(DataError(file, 0, "", "the file has no records"))
        return result
    result.format = fmt or _guess_format(objects) or ""
    if not result.format:
        keys = sorted({k for _, obj in objects if isinstance(obj, dict) for k in obj})
        result.errors.append(DataError(file, 0, "", f"could not tell the format: expected one of {FORMAT_HINT}; "
                                                    f"found keys: {', '.join(keys) or '(none)'}"))
        return result
    _parse_records(result, objects, mixed_formats_allowed=fmt is not None)
    return result


def _parse_records(result: ReadResult, objects: Numbered, mixed_formats_allowed: bool) -> None:
    """Parse each object in result.format into result.records, or its problems into result.errors."""
    file, parse = result.path, PARSERS[result.format]
    for line, obj in objects:
        if not isinstance(obj, dict):
            result.errors.append(DataError(file, line, "", "each record must be a JSON object {...}"))
            continue
        other = guess_record_format(obj)
        if not mixed_formats_allowed and other not in (None, result.format):
            result.errors.append(DataError(file, line, "", f"this record is {other} but the file's first records are "
                                                            f"{result.format}: use one format per file"))
            continue
        conversation, problems = parse(obj)
        result.errors.extend(DataError(file, line, field, message) for field, message in problems)
        if conversation is not None:
            conversation.source, conversation.line = file, line
            result.records.append(conversation)


def detect_format(path: str | PathLike) -> str | None:
    """The format read_data would pick for this file; None when it cannot be told."""
    path = Path(path)
    if is_table_path(path):
        return "table"
    objects, _ = _load_json_records(path)
    return _guess_format(objects)


def _guess_format(objects: Numbered) -> str | None:
    """The format of the first record that gives one away."""
    for _, obj in objects:
        fmt = guess_record_format(obj)
        if fmt:
            return fmt
    return None


def _load_json_records(path: Path) -> tuple[Numbered, list[DataError]]:
    """Records of a JSON array (numbered index+1), a single JSON object, or JSONL (numbered by line)."""
    text, error = read_text(path)
    if error:
        return [], [error]
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_array(str(path), text)
    objects, errors = _json_lines(str(path), text)
    if errors and stripped.startswith("{"):
        whole = _json_document(text)
        if isinstance(whole, dict):  # one pretty-printed record
            return [(1, whole)], []
    return objects, errors


def _json_document(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def _json_array(file: str, text: str) -> tuple[Numbered, list[DataError]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as error:
        return [], [DataError(file, error.lineno, "", f"not valid JSON: {error.msg} (column {error.colno})")]
    if not isinstance(items, list):
        return [], [DataError(file, 0, "", "expected a JSON array of records")]
    return [(index + 1, item) for index, item in enumerate(items)], []


def _json_lines(file: str, text: str) -> tuple[Numbered, list[DataError]]:
    objects: Numbered = []
    errors: list[DataError] = []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            objects.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            errors.append(DataError(file, number, "", f"not valid JSON: {error.msg} (column {error.colno})"))
    return objects, errors
