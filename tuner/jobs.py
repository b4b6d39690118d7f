"""A training job: a folder on disk, and ``xtuner train`` running in a subprocess that writes to it.

Layout of a job folder::

    spec.json        the TrainSpec
    config.py        the XTuner config (``xtuner train config.py`` runs it as is)
    data/            a copy of the training data, with its SHA-256 in data/SHA256SUMS
    train.log        everything XTuner printed, across attempts
    work_dir/        XTuner's work dir: iter_N.pth checkpoints, last_checkpoint
    status.json      state, reason, process ids, times
    adapter/         the Hugging Face adapter, converted when training succeeds
    merged/          the merged model, when asked for

A small supervisor process (``python -m tuner.supervisor DIR``, see tuner/supervisor.py) starts ``xtuner train``, waits,
and records how it ended. Both run in sessions of their own, so the job outlives the process that
started it (the app, the CLI); all state is on disk, so any process can read, cancel or resume it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from tuner import paths
from tuner.models import resolve_model
from tuner.processes import job_processes, process_alive, stop_job_processes
from tuner.progress import Progress, read_progress
from tuner.launch import shell_command, train_command
from tuner.spec import TrainSpec, render_config, spec_problems


class JobState(str, Enum):
    CREATED = "created"
    QUEUED = "queued"  # waiting for a free device (tuner.device_queue)
    RUNNING = "running"
    CONVERTING = "converting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class JobError(Exception):
    """A job cannot do what was asked (say why, and what to do)."""


@dataclass
class JobStatus:
    state: JobState = JobState.CREATED
    reason: str = ""
    supervisor_pid: int = 0
    supervisor_started: float = 0.0
    train_pgid: int = 0
    attempts: int = 0
    created: str = ""
    started: str = ""
    ended: str = ""
    resumed_from: str = ""
    merge_after: bool = False
    queued: float = 0.0  # when the job joined the line for a device (time.time())
    publish_after: dict | None = None  # {"hub", "repo", "private"}: push the adapter when training succeeds
    published: str = ""  # the adapter's page, once pushed
    publish_error: str = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        data["state"] = self.state.value
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobStatus":
        data = dict(data)
        data["state"] = JobState(data.get("state", "created"))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def now_iso() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Job:
    def __init__(self, folder: Path):
        self.dir = Path(folder)

    # paths ---------------------------------------------------------------------------------------
    @property
    def id(self) -> str:
        return self.dir.name

    config_path = property(lambda self: self.dir / "config.py")
    spec_path = property(lambda self: self.dir / "spec.json")
    log_path = property(lambda self: self.dir / "train.log")
    work_dir = property(lambda self: self.dir / "work_dir")
    status_path = property(lambda self: self.dir / "status.json")
    adapter_dir = property(lambda self: self.dir / "adapter")
    merged_dir = property(lambda self: self.dir / "merged")
    _cancel_marker = property(lambda self: self.dir / "cancel_requested")

    # reading -------------------------------------------------------------------------------------
    def spec(self) -> TrainSpec:
        return TrainSpec.load(self.spec_path)

    def read_status(self) -> JobStatus:
        if not self.status_path.exists():
            return JobStatus()
        return JobStatus.from_dict(json.loads(self.status_path.read_text(encoding="utf-8")))

    def write_status(self, status: JobStatus) -> None:
        _write_json(self.status_path, status.to_dict())

    def status(self) -> JobStatus:
        """The job's status, repaired if the processes that should update it are gone."""
        status = self.read_status()
        if status.state in (JobState.QUEUED, JobState.RUNNING, JobState.CONVERTING):
            supervisor = process_alive(status.supervisor_pid, status.supervisor_started)
            if not supervisor and not job_processes(self.dir):
                status = self.record_outcome(status, supervisor_lost=True)
        return status

    def progress(self) -> Progress:
        return read_progress(self.log_path, self.template())

    def template(self) -> dict:
        from tuner.models import prompt_templates

        return dict(prompt_templates().get(self.spec().prompt_template, {}))

    def checkpoints(self) -> list[Path]:
        found = []
        for path in self.work_dir.glob("iter_*.pth"):
            match = re.fullmatch(r"iter_(\d+)\.pth", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [path for _, path in sorted(found)]

    def last_checkpoint(self) -> Path | None:
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def command(self, resume_from: Path | None = None) -> str:
        command, env = train_command(self.config_path, self.work_dir, self.spec(), resume_from)
        return shell_command(command, env)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # outcome -------------------------------------------------------------------------------------
    def record_outcome(self, status: JobStatus, supervisor_lost: bool = False,
                       converting_next: bool = False) -> JobStatus:
        """Record how the training ended. ``converting_next``: the supervisor converts the adapter next, so
        a finished training is recorded as CONVERTING, never as a "succeeded" that a reader could take
        for done before the adapter (and any merge or push asked for) exists."""
        progress = self.progress()
        status.ended = now_iso()
        if self._cancel_marker.exists():
            status.state, status.reason = JobState.CANCELLED, "Cancelled. Resume continues from the last checkpoint."
        elif training_finished(progress, self.checkpoints()):
            if supervisor_lost and not (self.adapter_dir / "adapter_config.json").exists():
                status.state = JobState.FAILED
                status.reason = (f"Training finished but the adapter was not converted ({self._supervisor_error()})."
                                 f" Run: python -m tuner convert {self.id}")
            else:
                status.state, status.reason = JobState.CONVERTING if converting_next else JobState.SUCCEEDED, ""
        elif supervisor_lost and not status.train_pgid:
            status.state = JobState.FAILED
            status.reason = f"XTuner could not be started: {self._supervisor_error()}"
        else:
            status.state = JobState.FAILED
            status.reason = failure_reason(progress, supervisor_lost)
        self.write_status(status)
        return status


    def _supervisor_error(self) -> str:
        log = self.dir / "supervisor.log"
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines() if log.exists() else []
        return next((line.strip() for line in reversed(lines) if line.strip()), "no message") + \
            f" (see {log})"


def training_finished(progress: Progress, checkpoints: list[Path]) -> bool:
    last = progress.latest
    if last is None or last.iteration != last.total:
        return False
    return any(path.name == f"iter_{last.total}.pth" for path in checkpoints)


_REASONS = (
    (re.compile(r"out of memory|OutOfMemoryError", re.I),
     "Out of GPU memory. Lower batch_size or max_length, use QLoRA, or turn on DeepSpeed ZeRO."),
    (re.compile(r"couldn't connect to|not the path to a directory containing", re.I),
     "The model could not be found: it is not a local folder and the model hub could not be reached. "
     "Give a local model folder, or check the hub id and the network."),
    (re.compile(r"is not a local folder and is not a valid model identifier|Repository Not Found|"
                r"does not appear to have a file named config\.json|HFValidationError", re.I),
     "The model could not be found. Check the model path or hub id."),
    (re.compile(r"ConnectionError|Max retries exceeded|Name or service not known|offline mode", re.I),
     "The model hub could not be reached. Use a local model folder, or check the network."),
    (re.compile(r"FileNotFoundError|No such file or directory", re.I),
     "A file was not found. Check the model path and the data files."),
)


def failure_reason(progress: Progress, supervisor_lost: bool = False) -> str:
    error = progress.last_error
    if error:
        for pattern, advice in _REASONS:
            if pattern.search(error):
                return f"{advice} ({error[:300].rstrip('.')})"
        return f"Training failed: {error[:300].rstrip('.')}. The log has the details."
    if supervisor_lost:
        return "The training stopped when the process watching it ended. Resume continues from the last checkpoint."
    return ("The training process ended without finishing and without an error message; it was "
            "probably killed (often: out of memory). The log and checkpoints are kept; Resume continues.")


# creating, starting, cancelling ----------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "job"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def estimate_iters_per_epoch(spec: TrainSpec, data_files: list[Path], model_path: str) -> int | None:
    """Iterations in one epoch, as XTuner will count them; None when it cannot be told cheaply."""
    from tuner.data.store import read_jsonl_records

    records = [r for path in data_files for r in read_jsonl_records(path)]
    per_step = spec.batch_size * spec.gpus
    if not spec.pack_to_max_length:
        return max(1, math.ceil(len(records) / per_step))
    try:
        from transformers import AutoTokenizer

        from tuner.data.stats import dataset_stats

        tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=True)
    except Exception:  # noqa: BLE001 - a hub id offline: the estimate is only a guard
        return None
    stats = dataset_stats(records, tokenizer, spec.prompt_template, spec.max_length)
    tokens = sum(min(n, spec.max_length) for n in stats.token_lengths)
    return max(1, math.ceil(tokens / spec.max_length / per_step))


def create_job(spec: TrainSpec, name: str = "") -> Job:
    """A new job folder with spec, config and a copy of the data. Raises JobError if the spec is bad."""
    problems = spec_problems(spec)
    if problems:
        raise JobError(" ".join(problems))
    model_path = resolve_model(spec.model)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{stamp}-{_slug(name or Path(spec.data_files[0]).stem)}"
    folder = paths.jobs_dir() / base
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = paths.jobs_dir() / f"{base}-{suffix}"
    (folder / "data").mkdir(parents=True)
    job = Job(folder)
    copies = []
    sums = []
    for index, source in enumerate(spec.data_files):
        target = folder / "data" / f"{index:02d}-{Path(source).name}"
        shutil.copyfile(source, target)
        copies.append(target)
        sums.append(f"{_sha256(target)}  {target.name}")
    (folder / "data" / "SHA256SUMS").write_text("\n".join(sums) + "\n", encoding="utf-8")
    job_spec = spec.replace(data_files=[str(p) for p in copies])
    job_spec.save(job.spec_path)
    iters = estimate_iters_per_epoch(job_spec, copies, model_path)
    job.config_path.write_text(
        render_config(job_spec, "config.py", model_path=model_path, iters_per_epoch=iters), encoding="utf-8"
    )
    job.write_status(JobStatus(created=now_iso()))
    return job


def start_job(job: Job, resume: bool = False, merge_after: bool = False, publish_after: dict | None = None,
              secret_env: dict[str, str] | None = None) -> JobStatus:
    """Start (or resume) the job's training in the background and return at once.

    ``publish_after``: push the adapter to a hub when training succeeds (``{"hub", "repo", "private"}``).
    ``secret_env``: variables (a token) for the job's processes only: in their environment, never on disk.
    """
    status = job.status()
    if status.state in (JobState.QUEUED, JobState.RUNNING, JobState.CONVERTING):
        raise JobError(f"Job {job.id} is already {status.state.value}.")
    if status.state == JobState.SUCCEEDED:
        raise JobError(f"Job {job.id} has already finished.")
    job._cancel_marker.unlink(missing_ok=True)
    command = [sys.executable, "-m", "tuner.supervisor", str(job.dir)]
    if resume:
        command.append("--resume")
    env = dict(os.environ, **(secret_env or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent.parent),
                                                    env.get("PYTHONPATH", "")) if p)
    with (job.dir / "supervisor.log").open("a", encoding="utf-8") as log:
        process = subprocess.Popen(command, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, cwd=job.dir)
    import psutil

    status.state, status.reason, status.ended, status.train_pgid = JobState.QUEUED, "", "", 0
    status.queued = time.time()
    status.merge_after = merge_after or status.merge_after
    status.publish_after = publish_after or status.publish_after
    status.started = status.started or now_iso()
    status.supervisor_pid = process.pid
    status.supervisor_started = psutil.Process(process.pid).create_time()
    job.write_status(status)  # the supervisor waits for this before it writes the status itself
    return status


def resume_job(job: Job) -> JobStatus:
    state = job.status().state
    if state not in (JobState.FAILED, JobState.CANCELLED):
        raise JobError(f"Only a failed or cancelled job can be resumed; {job.id} is {state.value}.")
    return start_job(job, resume=True)


def cancel_job(job: Job, grace_seconds: float = 10.0) -> JobStatus:
    """Stop every process of the job's training (all ranks) and mark it cancelled."""
    status = job.status()
    if status.state.finished:
        return status
    job._cancel_marker.write_text(now_iso(), encoding="utf-8")
    stop_job_processes(job.dir, grace_seconds)
    deadline = time.time() + grace_seconds
    while time.time() < deadline:
        status = job.status()
        if status.state.finished:
            return status
        time.sleep(0.2)
    status = job.read_status()
    if not status.state.finished:
        status = job.record_outcome(status)
    return status


def queue_position(job: Job) -> int:
    """1 for the next job to get a device, 2 for the one after, …; 0 when the job is not waiting."""
    status = job.status()
    if status.state != JobState.QUEUED:
        return 0
    ahead = 0
    for other in list_jobs():
        if other.dir == job.dir:
            continue
        theirs = other.status()
        if theirs.state == JobState.QUEUED and (theirs.queued, other.id) < (status.queued, job.id):
            ahead += 1
    return ahead + 1


def wait_job(job: Job, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
    deadline = None if timeout is None else time.time() + timeout
    while True:
        status = job.status()
        if status.state.finished or status.state == JobState.CREATED:
            return status
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"Job {job.id} still {status.state.value} after {timeout} s")
        time.sleep(poll)


def list_jobs() -> list[Job]:
    return sorted((Job(p) for p in paths.jobs_dir().iterdir() if (p / "spec.json").exists()),
                  key=lambda j: j.id, reverse=True)


def get_job(job_id: str) -> Job:
    folder = Path(job_id)
    if not (folder / "spec.json").exists():
        folder = paths.jobs_dir() / job_id
    if not (folder / "spec.json").exists():
        raise JobError(f"No job {job_id!r}. `python -m tuner jobs list` shows the jobs.")
    return Job(folder)
