"""Structured progress read from the log that ``xtuner train`` writes (mmengine's log format).

A line such as ``Iter(train) [ 10/100]  lr: 2.0e-04  eta: 0:01:00  time: 0.5  memory: 9000  loss: 1.2
grad_norm: 0.5`` becomes an :class:`IterationEvent`; the evaluation hook's ``Sample output:`` blocks
become :class:`SampleEvent`. Reading is incremental so a UI can poll a growing log cheaply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_LOG_PREFIX = re.compile(r"^\d\d/\d\d \d\d:\d\d:\d\d - mmengine - (INFO|WARNING|ERROR|DEBUG) - ")
_ITER = re.compile(r"Iter\(train\)\s*\[\s*(\d+)/(\d+)\]\s+(.*)$")
_METRIC = re.compile(r"([a-z_]+):\s+(\S+)")
_ERROR_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt|Exit))\b:?\s*(.*)$")


@dataclass
class IterationEvent:
    iteration: int
    total: int
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    eta: str = ""
    seconds_per_iter: float | None = None
    memory_mb: float | None = None


@dataclass
class SampleEvent:
    after_iteration: int
    question: str
    answer: str


@dataclass
class Progress:
    iterations: list[IterationEvent] = field(default_factory=list)
    samples: list[SampleEvent] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    last_error: str = ""

    @property
    def latest(self) -> IterationEvent | None:
        return self.iterations[-1] if self.iterations else None

    @property
    def fraction(self) -> float:
        last = self.latest
        return last.iteration / last.total if last and last.total else 0.0

    def losses(self) -> list[tuple[int, float]]:
        return [(e.iteration, e.loss) for e in self.iterations if e.loss is not None]


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_iteration(line: str) -> IterationEvent | None:
    match = _ITER.search(line)
    if not match:
        return None
    metrics = dict(_METRIC.findall(match.group(3)))
    return IterationEvent(
        iteration=int(match.group(1)),
        total=int(match.group(2)),
        loss=_float(metrics.get("loss")),
        lr=_float(metrics.get("lr")),
        grad_norm=_float(metrics.get("grad_norm")),
        eta=metrics.get("eta", ""),
        seconds_per_iter=_float(metrics.get("time")),
        memory_mb=_float(metrics.get("memory")),
    )


def split_sample(text: str, template: dict | None = None) -> tuple[str, str]:
    """Question and answer of a sample the evaluation hook printed (prompt + generation)."""
    text = text.strip()
    instruction = (template or {}).get("INSTRUCTION", "")
    if "{input}" in instruction:
        before, after = instruction.split("{input}", 1)
        head = text.rfind(before.strip()) if before.strip() else 0
        tail = text.find(after.strip(), max(head, 0)) if after.strip() else -1
        if head >= 0 and tail >= 0:
            question = text[head + len(before.strip()):tail].strip()
            answer = text[tail + len(after.strip()):]
            for stop in [template.get("SUFFIX", "")] + list(template.get("STOP_WORDS", [])):
                if stop:
                    answer = answer.split(stop)[0]
            return question, answer.strip()
    return "", text


class LogReader:
    """Reads a training log from where it last stopped and accumulates :class:`Progress`."""

    def __init__(self, path: Path, template: dict | None = None):
        self.path = path
        self.template = template
        self.progress = Progress()
        self._offset = 0
        self._partial = ""
        self._sample: list[str] | None = None

    def poll(self) -> Progress:
        if not self.path.exists():
            return self.progress
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            chunk = handle.read()
        self._offset += len(chunk)
        text = self._partial + chunk.decode("utf-8", errors="replace")
        lines = re.split(r"\r?\n|\r", text)
        self._partial = lines.pop()  # an unfinished line waits for the rest
        for line in lines:
            self._feed(line)
        return self.progress

    def _feed(self, line: str) -> None:
        if self._sample is not None:
            if _LOG_PREFIX.match(line) or _ITER.search(line):
                self._finish_sample()
            else:
                self._sample.append(line)
                return
        if "Sample output:" in line:
            self._sample = [line.split("Sample output:", 1)[1]]
            return
        event = parse_iteration(line)
        if event is not None:
            self.progress.iterations.append(event)
            return
        saving = re.search(r"Saving checkpoint at (\d+) iterations", line)
        if saving:
            self.progress.checkpoints.append(int(saving.group(1)))
            return
        error = _ERROR_LINE.match(line.strip())
        if error and not line.startswith((" ", "\t")) and "Warning" not in error.group(1):
            self.progress.last_error = line.strip()

    def _finish_sample(self) -> None:
        text = "\n".join(self._sample or [])
        self._sample = None
        latest = self.progress.latest
        question, answer = split_sample(text, self.template)
        self.progress.samples.append(SampleEvent(latest.iteration if latest else 0, question, answer))

    def finish(self) -> Progress:
        """Call once the log is complete: flushes a trailing line or sample block."""
        self.poll()
        if self._partial:
            self._feed(self._partial)
            self._partial = ""
        if self._sample is not None:
            self._finish_sample()
        return self.progress


def read_progress(path: Path, template: dict | None = None) -> Progress:
    return LogReader(path, template).finish()


class ProgressCache:
    """One incremental :class:`LogReader` per log, so polling a growing log reads only what is new."""

    def __init__(self) -> None:
        self._readers: dict[Path, LogReader] = {}

    def progress(self, path: Path, template: dict | None = None) -> Progress:
        reader = self._readers.get(path)
        if reader is None or (path.exists() and path.stat().st_size < reader._offset):
            reader = self._readers[path] = LogReader(path, template)
        return reader.poll()
