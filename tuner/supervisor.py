"""The supervisor of a job: starts ``xtuner train``, waits, records how it ended, converts the adapter.

It runs as ``python -m tuner.supervisor JOB_DIR`` in a session of its own (see ``tuner.jobs.start_job``),
so the training outlives the app or CLI that started it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tuner import paths
from tuner.jobs import Job, JobState, JobStatus, _now
from tuner.processes import JOB_ENV, stop_job_processes
from tuner.launch import shell_command, train_command
from tuner.xtuner_compat import patched_environment


def tool_environment() -> dict[str, str]:
    env = patched_environment()
    # `xtuner` starts its tools as "python" (and "torchrun") from PATH: make that ours.
    shim = paths.cache() / "bin"
    shim.mkdir(parents=True, exist_ok=True)
    launcher = shim / "python"
    script = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'  # not a link: a venv is found from the path run
    if launcher.is_symlink() or not launcher.exists() or launcher.read_bytes() != script.encode():
        launcher.unlink(missing_ok=True)
        launcher.write_text(script)
        launcher.chmod(0o755)
    env["PATH"] = os.pathsep.join([str(shim), str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def xtuner_command() -> list[str]:
    """How to start the ``xtuner`` command line of the Python that runs us."""
    script = Path(sys.executable).parent / "xtuner"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from xtuner import cli; sys.argv[0] = 'xtuner'; sys.exit(cli())"]


def supervise(job: Job, resume: bool) -> JobStatus:
    deadline = time.time() + 30
    status = job.read_status()
    while status.supervisor_pid != os.getpid() and time.time() < deadline:
        time.sleep(0.05)  # start_job has not recorded us yet
        status = job.read_status()
    spec = job.spec()
    resume_from = job.last_checkpoint() if resume else None
    command, extra_env = train_command(job.config_path, job.work_dir, spec, resume_from)
    command = xtuner_command() + command[1:]
    env = tool_environment()
    env.update(extra_env)
    env[JOB_ENV] = str(job.dir)
    job.work_dir.mkdir(exist_ok=True)
    with job.log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n==== tuner: attempt {status.attempts + 1} at {_now()}: {shell_command(command, extra_env)}\n")
        log.flush()
        process = subprocess.Popen(command, env=env, cwd=job.dir, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    status.train_pgid = process.pid
    status.attempts += 1
    status.resumed_from = str(resume_from or "")
    job.write_status(status)
    signal.signal(signal.SIGTERM, lambda *_: stop_job_processes(job.dir, 5.0))
    process.wait()
    stop_job_processes(job.dir, 5.0)  # no rank outlives the launcher
    status = job._record_outcome(job.read_status())
    if status.state == JobState.SUCCEEDED:
        status = _convert_after_training(job, status)
    return status


def _convert_after_training(job: Job, status: JobStatus) -> JobStatus:
    from tuner.convert import ConversionError, convert_job, merge_job

    status.state = JobState.CONVERTING
    job.write_status(status)
    try:
        convert_job(job)
        if status.merge_after:
            merge_job(job)
        status.state = JobState.SUCCEEDED
    except ConversionError as error:
        status.state, status.reason = JobState.FAILED, str(error)
    status.ended = _now()
    job.write_status(status)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner.supervisor",
                                     description="(internal) run a job's training and record its outcome")
    parser.add_argument("job_dir")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    status = supervise(Job(Path(args.job_dir)), args.resume)
    return 0 if status.state == JobState.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
