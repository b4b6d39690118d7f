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

from tuner import lora_training
from tuner.device_queue import visible_devices_env, wait_for_devices
from tuner.jobs import Job, JobState, JobStatus, now_iso, queue_position
from tuner.kernels import ENV as KERNELS_ENV
from tuner.kernels import resolve_kernels
from tuner.launch import shell_command, train_command
from tuner.offload import ENV as OFFLOAD_ENV
from tuner.processes import JOB_ENV, stop_job_processes
from tuner.spec import resolve_precision
from tuner.xtuner_cli import tool_environment, xtuner_command


def supervise(job: Job, resume: bool) -> JobStatus:
    deadline = time.time() + 30
    status = job.read_status()
    while status.supervisor_pid != os.getpid() and time.time() < deadline:
        time.sleep(0.05)  # start_job has not recorded us yet
        status = job.read_status()
    spec = job.spec()
    lease = wait_for_devices(spec.gpus, my_turn=lambda: queue_position(job) == 1,
                             cancelled=job._cancel_marker.exists)
    if lease is None:
        return job.record_outcome(job.read_status())
    status = job.read_status()
    status.state = JobState.RUNNING
    job.write_status(status)
    resume_from = job.last_checkpoint() if resume else None
    command, extra_env = train_command(job.config_path, job.work_dir, spec, resume_from)
    command = xtuner_command() + command[1:]
    lever_env, kernels_note = _lever_environment(spec)
    extra_env.update(lever_env)
    env = tool_environment()
    env.update(extra_env)
    env.update(visible_devices_env(lease))
    env[JOB_ENV] = str(job.dir)
    job.work_dir.mkdir(exist_ok=True)
    with job.log_path.open("a", encoding="utf-8") as log:
        if kernels_note:
            log.write(f"\n==== tuner: {kernels_note}\n")
        log.write(f"\n==== tuner: attempt {status.attempts + 1} at {now_iso()}: {shell_command(command, extra_env)}\n")
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
    status = job.record_outcome(job.read_status(), converting_next=True)
    if status.state == JobState.CONVERTING:
        status = _convert_after_training(job, status)
    return status


def _lever_environment(spec) -> tuple[dict[str, str], str]:
    """What the start-up hooks in the training process read (tuner/kernels.py, tuner/lora_training.py,
    tuner/offload.py), and a note for the log when the kernels setting had to change."""
    kernels, note = _kernels(spec)
    return {KERNELS_ENV: kernels, OFFLOAD_ENV: "1" if spec.offload_activations else "0",
            lora_training.ENV: lora_training.resolve(spec.lora_kernel, spec.deepspeed),
            lora_training.FROZEN_ENV: lora_training.resolve_frozen(spec.frozen_dtype, resolve_precision(spec))}, note


def _kernels(spec) -> tuple[str, str]:
    """The ``kernels`` setting resolved on this machine, and a note for the log when it had to change."""
    try:
        return resolve_kernels(spec.kernels), ""
    except RuntimeError as error:
        return "none", f"{error} Training without them."


def _convert_after_training(job: Job, status: JobStatus) -> JobStatus:
    from tuner.convert import ConversionError, convert_job, merge_job

    status.state = JobState.CONVERTING
    job.write_status(status)
    try:
        convert_job(job)
        if status.merge_after:
            merge_job(job)
        if status.publish_after:  # still CONVERTING meanwhile: "succeeded" means all that was asked is done
            _publish_after_training(job, status)
        status.state = JobState.SUCCEEDED
    except ConversionError as error:
        status.state, status.reason = JobState.FAILED, str(error)
    status.ended = now_iso()
    job.write_status(status)
    return status


def _publish_after_training(job: Job, status: JobStatus) -> JobStatus:
    """Push the adapter (private unless asked otherwise) with the token this process was given in its
    environment (TUNER_PUBLISH_TOKEN, or the hub's usual variables); a failure is recorded, the job stays
    succeeded."""
    from deploy.publish import publish

    target = status.publish_after or {}
    token = os.environ.get("TUNER_PUBLISH_TOKEN") or None
    try:
        result = publish("adapter", target.get("hub", "hf"), target["repo"], job=job, token=token,
                         private=bool(target.get("private", True)), endpoint=target.get("endpoint"))
        status.published, status.publish_error = result.url, ""
    except Exception as error:  # noqa: BLE001 - recorded for the page; the adapter stays on disk
        message = str(error)
        for secret in (token or "").split(":"):
            if secret:
                message = message.replace(secret, "***")
        status.publish_error = message
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
