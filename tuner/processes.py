"""Finding and stopping every process of a job, however it was started.

Each process of a training inherits ``TUNER_JOB_DIR`` from the environment the supervisor gives
``xtuner train``. torchrun starts each rank in a session of its own, so a process group does not
reach them all; the variable does, and no rank outlives a cancel or its launcher.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

JOB_ENV = "TUNER_JOB_DIR"


def process_alive(pid: int, started: float = 0.0) -> bool:
    if pid <= 0:
        return False
    try:
        process = psutil.Process(pid)
        if started and abs(process.create_time() - started) > 1.0:
            return False  # the pid was reused by another process
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def job_processes(job_dir: Path) -> list[psutil.Process]:
    """The live processes started for this job's training (all ranks, launchers, workers)."""
    wanted = str(job_dir)
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.environ().get(JOB_ENV) == wanted and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.Error:
            continue
    return found


def stop_job_processes(job_dir: Path, grace_seconds: float = 10.0) -> int:
    """SIGTERM every process of the job, then SIGKILL what is left after the grace period."""
    processes = job_processes(job_dir)
    for process in processes:
        try:
            process.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(processes, timeout=grace_seconds)
    for process in alive + job_processes(job_dir):  # and any started meanwhile
        try:
            process.kill()
        except psutil.Error:
            pass
    return len(processes)
