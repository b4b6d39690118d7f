from pathlib import Path

from xtuner.utils import PROMPT_TEMPLATE

from tuner.jobs import Job, JobState, JobStatus, failure_reason, training_finished
from tuner.progress import LogReader, parse_iteration, read_progress
from tuner.spec import TrainSpec

LOG = Path(__file__).parent / "fixtures" / "xtuner_cpu_train.log"  # a real `xtuner train` log


def test_iterations_of_a_real_xtuner_log_become_events_with_loss_and_eta():
    progress = read_progress(LOG, PROMPT_TEMPLATE.qwen_chat)
    assert [e.iteration for e in progress.iterations] == list(range(1, 17))
    assert progress.latest.total == 16 and progress.fraction == 1.0
    first = progress.iterations[0]
    assert (first.loss, first.lr, first.grad_norm, first.eta) == (3.1664, 1e-3, 2.8977, "0:00:39")
    assert progress.checkpoints == [16]


def test_sample_outputs_are_split_into_question_and_answer():
    samples = read_progress(LOG, PROMPT_TEMPLATE.qwen_chat).samples
    assert len(samples) == 6
    assert samples[0].after_iteration == 0 and samples[0].question == "请做一下自我介绍"
    assert samples[-1].question == "Who are you?"
    assert samples[-1].answer == "I am Alice's assistant, happy to help."
    assert "<|im_end|>" not in samples[-2].answer


def test_log_reader_is_incremental_and_waits_for_unfinished_lines(tmp_path):
    log = tmp_path / "train.log"
    lines = LOG.read_text(encoding="utf-8").splitlines(keepends=True)
    reader = LogReader(log, PROMPT_TEMPLATE.qwen_chat)
    iter_line = next(i for i, line in enumerate(lines) if "Iter(train) [ 5/16]" in line)
    log.write_text("".join(lines[:iter_line]) + lines[iter_line][:30], encoding="utf-8")
    assert reader.poll().latest.iteration == 4
    with log.open("a", encoding="utf-8") as handle:
        handle.write(lines[iter_line][30:])
    assert reader.poll().latest.iteration == 5


def test_memory_and_time_are_read_from_gpu_log_lines():
    event = parse_iteration("11/23 10:00:00 - mmengine - INFO - Iter(train) [ 10/300]  lr: 2.0000e-04  "
                            "eta: 0:12:00  time: 0.4900  data_time: 0.0100  memory: 9612  loss: 1.2345  "
                            "grad_norm: 0.5000")
    assert (event.iteration, event.total, event.memory_mb, event.seconds_per_iter) == (10, 300, 9612, 0.49)


def test_a_traceback_gives_an_actionable_reason(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(LOG.read_text(encoding="utf-8").split("Iter(train) [ 3/16]")[0] + "\n"
                   "Traceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n", encoding="utf-8")
    progress = read_progress(log)
    assert progress.last_error.startswith("torch.OutOfMemoryError")
    assert failure_reason(progress).startswith("Out of GPU memory. Lower batch_size")
    assert not training_finished(progress, [])


def test_a_log_that_just_stops_is_reported_as_killed():
    progress = read_progress(LOG)
    progress.iterations = progress.iterations[:5]
    progress.last_error = ""
    assert "killed" in failure_reason(progress)
    assert not training_finished(progress, [Path("iter_16.pth")])
    assert training_finished(read_progress(LOG), [Path("iter_16.pth")])


def test_a_finished_training_reads_converting_until_the_supervisor_has_converted(tmp_path):
    """A reader polling the status (wait_job, the page) never sees "succeeded" before the adapter exists."""
    job = Job(tmp_path)
    TrainSpec(template="qwen_chat").save(job.spec_path)
    job.log_path.write_text(LOG.read_text(encoding="utf-8"), encoding="utf-8")
    job.work_dir.mkdir()
    (job.work_dir / "iter_16.pth").write_bytes(b"")
    assert job.record_outcome(JobStatus(state=JobState.RUNNING), converting_next=True).state == JobState.CONVERTING
    assert job.read_status().state == JobState.CONVERTING
    assert job.record_outcome(JobStatus(state=JobState.RUNNING)).state == JobState.SUCCEEDED
