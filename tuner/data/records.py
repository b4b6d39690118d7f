"""The in-memory shape of a data set: conversations of turns, and the problems found reading them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Turn:
    input: str
    output: str
    system: str = ""


@dataclass
class Conversation:
    turns: list[Turn]
    source: str = ""  # the file it was read from, when it was read from one
    line: int = 0  # its line (JSONL), index+1 (JSON array) or row (table) in that file

    def to_xtuner(self) -> dict:
        """XTuner's conversation format; "system" only on turns that have one."""
        conversation = []
        for turn in self.turns:
            item: dict[str, str] = {}
            if turn.system:
                item["system"] = turn.system
            item["input"] = turn.input
            item["output"] = turn.output
            conversation.append(item)
        return {"conversation": conversation}

    @classmethod
    def from_xtuner(cls, obj: dict[str, Any], source: str = "", line: int = 0) -> Conversation:
        """Trusts its input; use ``readers.read_data`` to validate a file."""
        turns = [Turn(input=t.get("input") or "", output=t.get("output") or "", system=t.get("system") or "")
                 for t in obj["conversation"]]
        return cls(turns=turns, source=source, line=line)


@dataclass
class DataError:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        return where + (f"{self.field}: " if self.field else "") + self.message


class DataFormatError(Exception):
    """Raised where a problem cannot be returned as data (e.g. ``replace_text``); carries the DataErrors."""

    def __init__(self, errors: list[DataError]):
        self.errors = list(errors)
        super().__init__("; ".join(str(e) for e in self.errors) or "invalid data")


@dataclass
class ReadResult:
    path: str
    format: str  # one of readers.FORMATS, or "" when it could not be told
    records: list[Conversation] = field(default_factory=list)
    errors: list[DataError] = field(default_factory=list)
    skipped: list[DataError] = field(default_factory=list)  # rows dropped on purpose, with the reason

    @property
    def ok(self) -> bool:
        return not self.errors and bool(self.records)
