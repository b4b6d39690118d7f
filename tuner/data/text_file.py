"""Turning a file's bytes into text, or into a DataError that says how to fix it."""

from __future__ import annotations

from pathlib import Path

from tuner.data.records import DataError

UTF8_HINT = "not UTF-8 text: save it as UTF-8"
_BINARY_SNIFF = 8192


def read_text(path: Path) -> tuple[str | None, DataError | None]:
    """The file's text (BOM removed, CRLF kept) or the one error that stops reading it."""
    file = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, DataError(file, 0, "", "file not found")
    except IsADirectoryError:
        return None, DataError(file, 0, "", "is a folder, not a file")
    except OSError as error:
        return None, DataError(file, 0, "", f"could not read the file: {error.strerror or error}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None, DataError(file, 0, "", f"{UTF8_HINT} (it is UTF-16)")
    if b"\x00" in raw[:_BINARY_SNIFF]:
        return None, DataError(file, 0, "", "binary file, not text: expected JSON, JSONL, CSV or Excel")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        return None, DataError(file, 0, "", f"{UTF8_HINT} (first bad byte on line {line})")
    if not text.strip():
        return None, DataError(file, 0, "", "the file is empty")
    return text, None


def split_lines(text: str) -> list[str]:
    """Lines split on "\\n" only: str.splitlines would also split on U+2028, which JSON strings may hold."""
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
