"""End-to-end wall time by stage on the embedded default: data, train, convert, merge, first answer.

    .venv/bin/python bench/e2e.py [--method lora|qlora] [--epochs 2] [--count 160] [--json OUT]

The baseline in the same run is the untouched base model: its load and first answer, next to the
fine-tuned model's. Prints one table; with --json also writes the figures.
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


def _timed(rows: list, stage: str, fn, note: str = ""):
    start = time.perf_counter()
    result = fn()
    rows.append((stage, time.perf_counter() - start, note))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="lora", choices=("lora", "qlora"))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--count", type=int, default=160)
    parser.add_argument("--name", default="Alice")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-bench-"))

    import torch

    from tuner.chat import GenerationSettings, load_chat_model, stream_reply
    from tuner.convert import merge_job
    from tuner.data import read_data, self_cognition_records, write_jsonl
    from tuner.jobs import JobState, create_job, start_job
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
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], max_epochs=args.epochs, method=args.method)
    job = _timed(rows, "job: create (config, data copy)", lambda: create_job(spec, "bench"))

    start = time.perf_counter()
    start_job(job)
    first_iter = train_end = None
    while True:
        status = job.read_status()
        if first_iter is None and job.progress().latest is not None:
            first_iter = time.perf_counter() - start
        if train_end is None and status.state != JobState.RUNNING:
            train_end = time.perf_counter() - start
        if job.status().state.finished:
            break
        time.sleep(0.2)
    done = time.perf_counter() - start
    progress = job.progress()
    if job.status().state != JobState.SUCCEEDED:
        print(job.log_tail(40))
        print(f"job failed: {job.status().reason}")
        return 1
    iters = progress.latest.total
    rows.append(("train: start -> first iteration", first_iter or 0.0, "model load + data map"))
    rows.append(("train: xtuner train (whole)", train_end, f"{iters} iterations, {args.method}"))
    rows.append(("convert: xtuner pth_to_hf", done - train_end, "adapter, safetensors"))
    _timed(rows, "merge: xtuner convert merge", lambda: merge_job(job))

    settings = GenerationSettings(max_new_tokens=64, temperature=0.0)

    def first_answer(kind: str, **kwargs) -> None:
        chat = _timed(rows, f"chat: load {kind}", lambda: load_chat_model(kind, **kwargs))
        start = time.perf_counter()
        first_token = None
        text = ""
        for text in stream_reply(chat, "Who are you?", settings=settings):
            if first_token is None and text:
                first_token = time.perf_counter() - start
        rows.append((f"chat: {kind} first token", first_token or 0.0, ""))
        rows.append((f"chat: {kind} whole answer", time.perf_counter() - start, text[:60].replace("\n", " ")))

    first_answer("base", model=EMBEDDED_MODEL)  # the baseline
    first_answer("adapter", adapter=job.adapter_dir)
    first_answer("merged", model=str(job.merged_dir))

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU x{os.cpu_count()}"
    print(f"\nend-to-end on the embedded default ({device}, torch {torch.__version__})\n")
    print(f"{'stage':38s} {'seconds':>9s}  note")
    for stage, seconds, note in rows:
        print(f"{stage:38s} {seconds:9.2f}  {note}")
    flow = sum(s for stage, s, _ in rows if stage.split(":")[0] in ("data", "job", "train", "convert", "merge")
               and "first iteration" not in stage)
    print(f"{'data -> merged model (sum)':38s} {flow:9.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
