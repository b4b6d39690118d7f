"""The tutorial's change_script.py: replace names in every string of a JSON or JSONL file."""

from __future__ import annotations

import json
import re
from os import PathLike
from pathlib import Path
from typing import Any, Callable

from tuner.data.records import DataError, DataFormatError
from tuner.data.text_file import read_text, split_lines


def replace_text(path_in: str | PathLike, path_out: str | PathLike, replacements: dict[str, str]) -> int:
    """Write path_in to path_out with every replacement made; returns how many strings changed.

    All replacements apply at once (longest match first), so {"A": "B", "B": "A"} swaps instead of chaining.
    Keys of JSON objects are left alone. A JSON document stays JSON, JSONL stays JSONL.
    """
    if any(not old for old in replacements):
        raise ValueError("the text to replace must not be empty")
    path_in, path_out = Path(path_in), Path(path_out)
    text, error = read_text(path_in)
    if error:
        raise DataFormatError([error])
    changed = 0
    replace = _replacer(replacements)

    def replace_in(value: str) -> str:
        nonlocal changed
        new = replace(value)
        changed += new != value
        return new

    document = _whole_json(text)
    one_line = len([line for line in split_lines(text) if line.strip()]) == 1
    if document is not _NOT_JSON:  # a one-line file is both JSON and JSONL: it stays on one line
        indent = None if one_line else 4
        output = json.dumps(_walk(document, replace_in), ensure_ascii=False, indent=indent) + "\n"
    else:
        lines = _json_lines_or_raise(str(path_in), text)
        output = "".join(json.dumps(_walk(obj, replace_in), ensure_ascii=False) + "\n" for obj in lines)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    path_out.write_text(output, encoding="utf-8")
    return changed


_NOT_JSON = object()


def _whole_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return _NOT_JSON


def _json_lines_or_raise(file: str, text: str) -> list[Any]:
    objects, errors = [], []
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        try:
            objects.append(json.loads(line))
        except json.JSONDecodeError as error:
            errors.append(DataError(file, number, "", f"not valid JSON: {error.msg} (column {error.colno})"))
    if errors:
        raise DataFormatError(errors)
    return objects


def _replacer(replacements: dict[str, str]) -> Callable[[str], str]:
    if not replacements:
        return lambda value: value
    pattern = re.compile("|".join(re.escape(old) for old in sorted(replacements, key=len, reverse=True)))
    return lambda value: pattern.sub(lambda match: replacements[match.group(0)], value)


def _walk(value: Any, replace: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return replace(value)
    if isinstance(value, list):
        return [_walk(item, replace) for item in value]
    if isinstance(value, dict):
        return {key: _walk(item, replace) for key, item in value.items()}
    return value
