"""Is batch 2 the same training as batch 1 with 2 steps accumulated? Two `xtuner train` jobs on the embedded model
(CPU; packed 256-token sequences, one epoch, same data and seed), compared per optimizer step.

XTuner logs mmengine's running mean of the loss over the last 10 iterations, so a job that takes twice the
iterations per optimizer step shows a curve smoothed over half the optimizer steps: the logged values are first
turned back into per-iteration losses (``per_iteration``), then the accumulated job's two micro-batches are averaged.

    .venv/bin/python bench/accumulation.py [--records 320]
    .venv/bin/python bench/accumulation.py --logs A.log B.log     (two train.log files: batch 1 x 2, batch 2 x 1)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WINDOW = 10  # mmengine's LogProcessor window_size


def per_iteration(means: list[float], window: int = WINDOW) -> list[float]:
    """The losses whose running means over ``window`` iterations (fewer at the start) ``means`` are."""
    losses: list[float] = []
    for k in range(1, len(means) + 1):
        if k <= window:
            losses.append(k * means[k - 1] - (k - 1) * (means[k - 2] if k > 1 else 0.0))
        else:
            losses.append(window * (means[k - 1] - means[k - 2]) + losses[k - 1 - window])
    return losses


def logged_losses(log: Path) -> list[float]:
    return [float(m) for m in re.findall(r"Iter\(train\) \[ *\d+/\d+\].*?loss: ([0-9.]+)", log.read_text())]


def compare(accumulated: list[float], batched: list[float]) -> list[tuple[int, float, float]]:
    """(optimizer step, batch 1 x 2 mean, batch 2) for each step both have."""
    a, b = per_iteration(accumulated), per_iteration(batched)
    pairs = [(a[2 * i] + a[2 * i + 1]) / 2 for i in range(len(a) // 2)]
    return [(i + 1, p, q) for i, (p, q) in enumerate(zip(pairs, b))]


def run_jobs(records: int) -> tuple[Path, Path]:
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-accumulation-"))
    from tuner.data import self_cognition_records, write_jsonl
    from tuner.jobs import JobState, create_job, start_job, wait_job
    from tuner.models import EMBEDDED_MODEL
    from tuner.spec import spec_for_model

    data = write_jsonl(self_cognition_records("Alice", count=records), Path(os.environ["TUNER_HOME"]) / "d.jsonl")
    logs = []
    for batch, accumulate in ((1, 2), (2, 1)):
        spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], max_epochs=1, batch_size=batch,
                              accumulative_counts=accumulate, pack_to_max_length=True, max_length=256, lr=1e-3,
                              warmup_ratio=0.0, evaluation_freq=100000, save_steps=100000, seed=0, map_num_proc=1)
        job = create_job(spec, f"accumulation-b{batch}a{accumulate}")
        start_job(job, merge_after=False)
        status = wait_job(job, timeout=1800)
        if status.state != JobState.SUCCEEDED:
            raise SystemExit(f"{job.dir.name}: {status.state.value} {status.reason}\n{job.log_tail(30)}")
        logs.append(job.log_path)
    return logs[0], logs[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=320)
    parser.add_argument("--logs", nargs=2, type=Path, help="train.log of batch 1 x 2 accumulated, then of batch 2")
    args = parser.parse_args()
    accumulated_log, batched_log = args.logs or run_jobs(args.records)
    rows = compare(logged_losses(accumulated_log), logged_losses(batched_log))
    print(f"{'step':>4s} {'b1 x a2':>9s} {'b2 x a1':>9s} {'diff':>8s}")
    for step, p, q in rows:
        print(f"{step:4d} {p:9.4f} {q:9.4f} {100 * (q - p) / p:7.2f}%")
    worst = max(abs(q - p) / p for _, p, q in rows[:10])
    print(f"\nlargest difference in the first 10 optimizer steps: {100 * worst:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
