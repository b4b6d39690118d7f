"""XTuner conversation JSONL on disk, and the named data sets kept in the workspace."""

from __future__ import annotations

import datetime as dt
import json
import re
from os import PathLike
from pathlib import Path
from typing import Iterable

from tuner import paths
from tuner.data.readers import read_data
from tuner.data.records import Conversation, DataFormatError

TRAIN_FILE = "train.jsonl"
TEST_FILE = "test.jsonl"
META_FILE = "meta.json"
_NAME = re.compile(r"[\w.-]{1,100}")  # \w is Unicode: CJK letters are allowed


def write_jsonl(records: Iterable[Conversation], path: str | PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record.to_xtuner(), ensure_ascii=False) + "\n")
    return path


def read_jsonl_records(path: str | PathLike) -> list[Conversation]:
    """Records of an XTuner conversation file; raises DataFormatError when any record is invalid."""
    result = read_data(path, "xtuner")
    if result.errors:
        raise DataFormatError(result.errors)
    return result.records


def safe_dataset_name(name: str) -> str:
    """The name, stripped, if it is safe as a folder name; ValueError otherwise."""
    name = (name or "").strip()
    if not _NAME.fullmatch(name) or name.startswith("."):
        raise ValueError(f"data set name {name!r} is not allowed: use letters, digits, '-', '_' or '.' "
                         "(not first), at most 100 characters")
    return name


def save_dataset(name: str, records: list[Conversation], test_records: list[Conversation] | None = None) -> Path:
    """Write (or overwrite) the data set's folder: train.jsonl, test.jsonl when there are test records, meta.json."""
    name = safe_dataset_name(name)
    if not records:
        raise ValueError("a data set needs at least one training record")
    folder = paths.datasets_dir() / name
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(records, folder / TRAIN_FILE)
    test_path = folder / TEST_FILE
    if test_records:
        write_jsonl(test_records, test_path)
    elif test_path.exists():
        test_path.unlink()  # left from an earlier save under the same name
    meta = {
        "name": name,
        "train_records": len(records),
        "test_records": len(test_records or []),
        "turns": sum(len(r.turns) for r in records),
        "format": "xtuner",
        "created": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    (folder / META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return folder


def list_datasets() -> list[str]:
    root = paths.datasets_dir()
    return sorted(entry.name for entry in root.iterdir() if (entry / TRAIN_FILE).is_file())


def dataset_path(name: str) -> Path:
    """The data set's train.jsonl (which may not exist: check before reading)."""
    return paths.datasets_dir() / safe_dataset_name(name) / TRAIN_FILE


def dataset_meta(name: str) -> dict:
    path = paths.datasets_dir() / safe_dataset_name(name) / META_FILE
    return json.loads(path.read_text(encoding="utf-8"))


