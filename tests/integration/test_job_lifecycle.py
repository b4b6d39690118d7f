"""Jobs with the real `xtuner train`: cancel, resume from the last checkpoint, a killed run, a bad model,
and state that lives on disk (a fresh Job object, as after an app restart, sees the same truth)."""

import os
import signal
import time

import pytest

from tuner.data import self_cognition_records, write_jsonl
from tuner.jobs import Job, JobError, JobState, cancel_job, create_job, resume_job, start_job, wait_job
from tuner.models import EMBEDDED_MODEL
from tuner.processes import job_processes
from tuner.spec import spec_for_model

pytestmark = pytest.mark.integration


def _data(workspace, count=48):
    return write_jsonl(self_cognition_records("Bob", count=count), workspace / f"bob-{count}.jsonl")


def _wait_for_iteration(job, at_least, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        latest = job.progress().latest
        if latest and latest.iteration >= at_least:
            return latest
        assert not job.status().state.finished, job.log_tail(40)
        time.sleep(0.5)
    raise AssertionError(f"no iteration {at_least} within {timeout} s\n{job.log_tail(40)}")


def test_cancel_then_resume_continues_from_the_last_checkpoint(workspace):
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(_data(workspace))], max_epochs=2, batch_size=2,
                          save_steps=4, evaluation_freq=1000, evaluation_inputs=["Who are you?"])
    job = create_job(spec, "cancel-resume")
    start_job(job)
    _wait_for_iteration(job, 6)
    status = cancel_job(job)
    assert status.state == JobState.CANCELLED
    assert job_processes(job.dir) == [], "a training process outlived cancel"
    reopened = Job(job.dir)  # as after a restart: only the folder
    assert reopened.status().state == JobState.CANCELLED
    assert reopened.last_checkpoint().name == "iter_4.pth"
    resume_job(reopened)
    final = wait_job(reopened, timeout=900)
    assert final.state == JobState.SUCCEEDED, f"{final.reason}\n{reopened.log_tail(40)}"
    log = reopened.log_path.read_text(encoding="utf-8")
    first, second = log.split("==== tuner: attempt 2")
    assert "--resume" in second.splitlines()[0] and "resumed epoch: 0, iter: 4" in second
    before = {e.iteration: e.loss for e in read_progress_text(first)}
    after = read_progress_text(second)
    assert after[0].iteration == 5  # continues, does not start over
    assert after[0].loss == pytest.approx(before[5], rel=0.01)  # from the same weights and optimizer state
    assert (reopened.adapter_dir / "adapter_model.safetensors").is_file()
    with pytest.raises(JobError, match="already finished"):
        start_job(reopened)


def test_a_killed_training_ends_as_failed_with_its_log_and_a_reason(workspace):
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(_data(workspace))], max_epochs=3, batch_size=2,
                          evaluation_freq=1000, evaluation_inputs=["Who are you?"])
    job = create_job(spec, "killed")
    start_job(job)
    _wait_for_iteration(job, 2)
    os.killpg(job.read_status().train_pgid, signal.SIGKILL)
    status = wait_job(job, timeout=60)
    assert status.state == JobState.FAILED
    assert "killed" in status.reason
    assert "Iter(train)" in job.log_path.read_text(encoding="utf-8")


def test_a_model_that_does_not_exist_fails_fast_with_a_reason(workspace, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = spec_for_model("no-such-org/no-such-model", data_files=[str(_data(workspace, 8))], method="lora",
                          precision="fp32")
    job = create_job(spec, "bad-model")
    start_job(job)
    status = wait_job(job, timeout=300)
    assert status.state == JobState.FAILED
    assert "could not be found" in status.reason or "could not be reached" in status.reason, status.reason
    assert job.log_path.stat().st_size > 0


def read_progress_text(text):
    from tuner.progress import parse_iteration

    return [e for e in map(parse_iteration, text.splitlines()) if e]
