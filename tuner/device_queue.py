"""One training per device at a time: the jobs that find every device busy wait in line, first come first served.

A device is a GPU (or, on a machine without one, the CPU as a single device). Each has a lock file in
``TUNER_HOME/devices``; a job's supervisor holds ``fcntl`` locks on the devices it trains on, so a lock
is released by the kernel when that process ends, however it ends. The line itself is the set of jobs
whose status is QUEUED, ordered by the time they joined it, so any process (the app after a restart, a
second browser, the CLI) can tell a job's place without asking anyone.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from tuner import paths


def device_count() -> int:
    """GPUs this machine has (CUDA_VISIBLE_DEVICES honoured), or 1 for the CPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    try:
        import torch

        return max(1, torch.cuda.device_count())
    except Exception:  # noqa: BLE001 - no torch here means no GPU either
        return 1


def _locks_dir() -> Path:
    path = paths.home() / "devices"
    path.mkdir(parents=True, exist_ok=True)
    return path


class DeviceLease:
    """Devices held by this process until ``release`` (or until the process ends)."""

    def __init__(self, devices: list[int], handles: list):
        self.devices = devices
        self._handles = handles

    def release(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    def __enter__(self) -> "DeviceLease":
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def try_acquire(count: int, total: int | None = None) -> DeviceLease | None:
    """Lock ``count`` free devices at once, or none: None when fewer than ``count`` are free."""
    total = total or device_count()
    if count > total:
        count = total
    held, handles = [], []
    for device in range(total):
        handle = open(_locks_dir() / f"device-{device}.lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        held.append(device)
        handles.append(handle)
        if len(held) == count:
            return DeviceLease(held, handles)
    for handle in handles:
        handle.close()
    return None


def wait_for_devices(count: int, my_turn: Callable[[], bool], poll: float = 1.0,
                     cancelled: Callable[[], bool] = lambda: False) -> DeviceLease | None:
    """Block until it is this job's turn (``my_turn``) and ``count`` devices are free; None if cancelled."""
    while True:
        if cancelled():
            return None
        if my_turn():
            lease = try_acquire(count)
            if lease is not None:
                return lease
        time.sleep(poll)


def visible_devices_env(lease: DeviceLease) -> dict[str, str]:
    """The environment that pins a training to the leased GPUs (nothing on a CPU-only machine)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
    except Exception:  # noqa: BLE001
        return {}
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(device_count())]
    return {"CUDA_VISIBLE_DEVICES": ",".join(names[d] for d in lease.devices)}
