"""End-to-end wall time by stage on the embedded default: data, train, convert, merge, first answer.

    .venv/bin/python bench/e2e.py [--method lora|qlora] [--epochs N] [--count 160] [--set KEY=VALUE ...] [--json OUT]

The job runs as the app runs it (tuner.jobs.start_job: a supervisor starts `xtuner train`, then converts
the adapter with `xtuner convert pth_to_hf`); the bench follows status.json and train.log. Training ends
when the job leaves QUEUED/RUNNING (CONVERTING, or SUCCEEDED when there is nothing to convert); the
adapter is ready when the job is finished and its supervisor has exited. Without --epochs or --set, the
spec is the embedded model's preset (tuner/spec.py), i.e. what a new user runs first.

The baseline in the same run is the untouched base model: its load and first answer, next to the
fine-tuned model's. The probe asks identity questions (the data's and unseen ones, as
tests/integration/test_end_to_end.py does) and checks that the answers name the person; the exit status
is 1 when the merged model fails it. Prints one table; with --json also writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# The questions of tests/integration/test_end_to_end.py: two from the data, four it never contains.
PROBES = ["Who are you?", "你是谁", "Could you tell me who you are?", "May I ask who you are?", "能告诉我你的身份吗？",
          "你到底是谁呀？"]
PROBES_NEEDED = 5  # of 6 must name the person, one of them in Chinese (the integration test's bar)


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def probe_passes(answers: dict[str, str], name: str) -> bool:
    named = [q for q, a in answers.items() if name in a]
    return len(named) >= PROBES_NEEDED and any(_has_cjk(q) and _has_cjk(answers[q]) for q in named)


def _setting(text: str) -> tuple[str, object]:
    import ast

    key, _, value = text.partition("=")
    try:
        return key.strip(), ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
        return key.strip(), value.strip()


def follow_job(job, timeout: float, poll: float = 0.25) -> tuple[dict[str, float], object]:
    """Start the job and follow it to the end: seconds from start_job to each mark, and the progress.

    running: the supervisor has its device and starts `xtuner train`; first_iter_start: the first
    iteration began (its train.log line, less the time the line reports for it); last_iter: the last
    iteration's line appeared; train_end: the job left QUEUED/RUNNING; done: the job is finished and its
    supervisor has exited (SUCCEEDED is written once before CONVERTING, so the state alone is not enough).
    """
    from tuner.jobs import JobState, start_job
    from tuner.processes import process_alive
    from tuner.progress import LogReader

    reader = LogReader(job.log_path)  # no template: reading the log must not import XTuner here
    marks: dict[str, float] = {}
    start = time.perf_counter()
    start_job(job)
    while True:
        now = time.perf_counter() - start
        status = job.read_status()
        progress = reader.poll()
        if status.state == JobState.RUNNING:
            marks.setdefault("running", now)
        if progress.iterations and "first_iter_start" not in marks:
            first = progress.iterations[0]
            marks["first_iter_start"] = now - first.iteration * (first.seconds_per_iter or 0.0)
        if progress.latest and progress.latest.iteration == progress.latest.total:
            marks.setdefault("last_iter", now)
        if status.state not in (JobState.CREATED, JobState.QUEUED, JobState.RUNNING):
            marks.setdefault("train_end", now)
        if status.state.finished and not process_alive(status.supervisor_pid, status.supervisor_started):
            marks["done"] = now
            break
        if not process_alive(status.supervisor_pid, status.supervisor_started) and job.status().state.finished:
            marks.setdefault("train_end", now)
            marks["done"] = now
            break
        if now > timeout:
            raise TimeoutError(f"job {job.id} still {status.state.value} after {timeout:.0f} s")
        time.sleep(poll)
    marks.setdefault("running", marks["train_end"])
    return marks, reader.finish()


def _timed(rows: list, stage: str, fn, note: str = ""):
    start = time.perf_counter()
    result = fn()
    rows.append((stage, time.perf_counter() - start, note))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="lora", choices=("lora", "qlora"))
    parser.add_argument("--epochs", type=int, default=None, help="max_epochs (default: the preset's)")
    parser.add_argument("--count", type=int, default=160, help="self-cognition records (the Data tab's default)")
    parser.add_argument("--name", default="Alice")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainSpec field, e.g. --set max_length=128 (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the job may take")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-bench-"))

    import torch

    from tuner.chat import GenerationSettings, load_chat_model, stream_reply
    from tuner.convert import merge_job
    from tuner.data import read_data, self_cognition_records, write_jsonl
    from tuner.jobs import JobState, create_job
    from tuner import paths
    from tuner.models import EMBEDDED_MODEL, embedded_model_dir
    from tuner.spec import spec_for_model
    from tuner.xtuner_compat import quiet_known_noise

    quiet_known_noise()
    rows: list[tuple[str, float, str]] = []
    cached = (paths.cache() / "models" / "SmolLM2-135M-Instruct" / "tuner-converted.json").exists()
    _timed(rows, "model: GGUF -> HF folder", embedded_model_dir, "cached" if cached else "converted now")

    def make_data() -> Path:
        path = write_jsonl(self_cognition_records(args.name, count=args.count),
                           Path(os.environ["TUNER_HOME"]) / "data.jsonl")
        assert read_data(path).ok
        return path

    data = _timed(rows, "data: generate + validate", make_data, f"{args.count} records")
    overrides = dict(_setting(text) for text in args.set)
    if args.epochs is not None:
        overrides["max_epochs"] = args.epochs
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], method=args.method, **overrides)
    job = _timed(rows, "job: create (config, data copy)", lambda: create_job(spec, "bench"))

    marks, progress = follow_job(job, args.timeout)
    if job.status().state != JobState.SUCCEEDED:
        print(job.log_tail(40))
        print(f"job failed: {job.status().reason}")
        return 1
    iters = progress.latest.total
    first_start = marks.get("first_iter_start", marks["running"])
    last_iter = marks.get("last_iter", marks["train_end"])
    steady = sorted(e.seconds_per_iter for e in progress.iterations[1:] if e.seconds_per_iter)
    per_iter = f", median {steady[len(steady) // 2]:.2f} s/iter" if steady else ""
    rows.append(("train: supervisor start + device queue", marks["running"], "until RUNNING"))
    rows.append(("train: start-up until first iteration", first_start - marks["running"],
                 "xtuner CLI, imports, model load, data map, hooks (train.log)"))
    rows.append(("train: iterations", last_iter - first_start, f"{iters} iterations{per_iter}"))
    rows.append(("train: after the last iteration", marks["train_end"] - last_iter, "checkpoint save, exit"))
    rows.append(("train: xtuner train (whole)", marks["train_end"], f"start_job until CONVERTING; {args.method}"))
    rows.append(("convert: xtuner pth_to_hf", marks["done"] - marks["train_end"], "adapter, safetensors"))
    _timed(rows, "merge: xtuner convert merge", lambda: merge_job(job))

    settings = GenerationSettings(max_new_tokens=64, temperature=0.0)
    answers: dict[str, dict[str, str]] = {}

    def first_answer(kind: str, **kwargs) -> None:
        chat = _timed(rows, f"chat: load {kind}", lambda: load_chat_model(kind, **kwargs))
        start = time.perf_counter()
        first_token = None
        text = ""
        for text in stream_reply(chat, PROBES[0], settings=settings):
            if first_token is None and text:
                first_token = time.perf_counter() - start
        rows.append((f"chat: {kind} first token", first_token or 0.0, ""))
        rows.append((f"chat: {kind} whole answer", time.perf_counter() - start, text[:60].replace("\n", " ")))
        answers[kind] = {PROBES[0]: text}
        for question in PROBES[1:]:
            for text in stream_reply(chat, question, settings=settings):
                pass
            answers[kind][question] = text

    first_answer("base", model=EMBEDDED_MODEL)  # the baseline
    first_answer("adapter", adapter=job.adapter_dir)
    first_answer("merged", model=str(job.merged_dir))
    losses = [loss for _, loss in progress.losses()]

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"\nend-to-end on the embedded default ({device}, torch {torch.__version__})\n")
    settings_note = ", ".join(f"{k}={getattr(spec, k)}" for k in ("max_epochs", "max_length", "pack_to_max_length",
                                                                   "batch_size", "accumulative_counts", "lr",
                                                                   "lora_r", "evaluation_freq", "save_steps"))
    print(f"spec: {args.method}, {settings_note}; {args.count} records\n")
    print(f"{'stage':40s} {'seconds':>9s}  note")
    for stage, seconds, note in rows:
        inner = stage.startswith("train:") and "(whole)" not in stage
        print(f"{('  ' if inner else '') + stage:40s} {seconds:9.2f}  {note}")
    seconds = dict((stage, s) for stage, s, _ in rows)
    flow = sum(seconds[stage] for stage in ("data: generate + validate", "job: create (config, data copy)",
                                            "train: xtuner train (whole)", "convert: xtuner pth_to_hf",
                                            "merge: xtuner convert merge"))
    answer = flow + seconds["chat: load merged"] + seconds["chat: merged first token"]
    print(f"{'data -> merged model (total)':40s} {flow:9.2f}")
    print(f"{'data -> first answer of merged (total)':40s} {answer:9.2f}")
    print(f"loss: first {losses[0]:.3f}, last {losses[-1]:.3f}" if losses else "loss: not logged")
    samples = [sample.answer.strip() for sample in progress.samples if sample.answer.strip()]
    named_samples = sum(args.name in answer for answer in samples)
    # what the user watches in the Fine-tune tab: XTuner's sampled answers (temperature 0.1) during training
    print(f"training samples: {named_samples}/{len(samples)} name {args.name}; last: "
          f"{samples[-1][-60:].replace(chr(10), ' ') if samples else '-'}")
    passed = {}
    for kind, said in answers.items():
        named = sum(args.name in a for a in said.values())
        passed[kind] = probe_passes(said, args.name)
        verdict = "" if kind == "base" else (" PASS" if passed[kind] else " FAIL")
        print(f"probe ({kind}): {named}/{len(said)} answers name {args.name}{verdict}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "spec": spec.to_dict(), "rows": rows,
                                               "total_to_merged_s": flow, "total_to_first_answer_s": answer,
                                               "losses": losses, "answers": answers, "probe": passed,
                                               "training_samples": samples},
                                              indent=2, ensure_ascii=False))
    return 0 if passed.get("merged") else 1


if __name__ == "__main__":
    sys.exit(main())
