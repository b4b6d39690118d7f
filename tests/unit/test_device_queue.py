"""One training per device: locks are exclusive, and jobs wait in the order they joined the line."""

import subprocess
import sys
import time

from tuner import device_queue
from tuner.jobs import Job, JobState, JobStatus, queue_position


def test_a_device_held_by_one_lease_is_not_given_to_another(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    first = device_queue.try_acquire(1, total=2)
    second = device_queue.try_acquire(1, total=2)
    assert first.devices == [0] and second.devices == [1]
    assert device_queue.try_acquire(1, total=2) is None
    first.release()
    third = device_queue.try_acquire(1, total=2)
    assert third.devices == [0]
    second.release()
    third.release()


def test_a_job_needing_two_devices_takes_none_while_only_one_is_free(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    held = device_queue.try_acquire(1, total=2)
    assert device_queue.try_acquire(2, total=2) is None
    assert device_queue.try_acquire(1, total=2).devices == [1]  # the failed try released what it took
    held.release()


def test_a_lock_is_freed_when_its_process_dies(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    holder = subprocess.Popen([sys.executable, "-c", "from tuner import device_queue; import time; "
                               "l = device_queue.try_acquire(1, total=1); print(l.devices, flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              env={"TUNER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin",
                                   "PYTHONPATH": str(device_queue.Path(device_queue.__file__).parents[1])})
    assert holder.stdout.readline().strip() == "[0]"
    assert device_queue.try_acquire(1, total=1) is None
    holder.kill()
    holder.wait()
    lease = device_queue.try_acquire(1, total=1)
    assert lease is not None
    lease.release()


def _queued_job(home, name: str, queued: float) -> Job:
    folder = home / "jobs" / name
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text("{}")
    job = Job(folder)
    # a live pid, so that the status is not repaired as "supervisor lost"
    job.write_status(JobStatus(state=JobState.QUEUED, queued=queued, supervisor_pid=1,
                               supervisor_started=__import__("psutil").Process(1).create_time()))
    return job


def test_jobs_wait_in_the_order_they_joined_the_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNER_HOME", str(tmp_path))
    now = time.time()
    later = _queued_job(tmp_path, "b-later", now + 5)
    first = _queued_job(tmp_path, "c-first", now)
    assert queue_position(first) == 1
    assert queue_position(later) == 2
    first.write_status(JobStatus(state=JobState.CANCELLED))
    assert queue_position(later) == 1
    assert queue_position(first) == 0
