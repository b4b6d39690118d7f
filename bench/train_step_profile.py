"""Where a QLoRA training step spends its time on the host: the plain loop of bench/train_speed.py with levers,
one step each under the CUDA sync debugger (where the host waits for the GPU), cProfile (the Python functions
that take the most time of their own) and the torch profiler (kernel launches and GPU time per step); then
s/iter at several batch sizes (sequences of 2048 tokens per step), so "more tokens per launch" is measured
beside "fewer launches".

    python bench/train_step_profile.py --tokenizer DIR [--levers bf16,fused,liger] [--batches 1,2,4] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import pstats
import statistics
import sys
import time
import traceback
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_speed import LEVERS, SEQ, load_qlora  # noqa: E402
from train_speed import train_step as step  # noqa: E402


def sync_sources(model, optimizer, ids) -> collections.Counter:
    """Where the host waited for the GPU during one step: the innermost frame outside torch, per sync."""
    import torch

    sources: collections.Counter = collections.Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        frames = [f for f in traceback.extract_stack()[:-1]
                  if "/torch/" not in f.filename and "warnings" not in f.filename]
        where = frames[-1] if frames else None
        sources[f"{Path(where.filename).name}:{where.lineno} {where.name}" if where else f"{filename}:{lineno}"] += 1

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record  # restored when the block ends
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(model, optimizer, ids)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sources


def python_profile(model, optimizer, ids, top: int) -> str:
    import torch

    profiler = cProfile.Profile()
    torch.cuda.synchronize()
    profiler.enable()
    step(model, optimizer, ids)
    torch.cuda.synchronize()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def launches(model, optimizer, ids) -> dict:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        step(model, optimizer, ids)
        torch.cuda.synchronize()
    averages = prof.key_averages()
    count = sum(e.count for e in averages if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                      "cuLaunchKernelEx"))
    gpu_ms = sum(e.self_device_time_total for e in averages) / 1000
    syncs = {e.key: e.count for e in averages if "ynchronize" in e.key or "Memcpy" in e.key}
    return {"launches": count, "gpu_ms": gpu_ms, "syncs": syncs}


def timed(model, optimizer, ids, steps: int) -> float:
    import torch

    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        step(model, optimizer, ids)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--levers", default="bf16,fused,liger")
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    import torch

    from multigpu import make_model

    model = load_qlora(make_model(Path(args.model_dir), Path(args.tokenizer)))
    levers = [x for x in args.levers.split(",") if x]
    for lever in levers:
        print(f"lever {lever}: {LEVERS[lever](model)}", flush=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (1, SEQ), device="cuda")
    for _ in range(3):
        step(model, optimizer, ids)
    name = "plain + " + "+".join(levers) if levers else "plain loop"
    if not args.no_profile:
        print(f"\n== {name}: host syncs in one step")
        for where, count in sync_sources(model, optimizer, ids).most_common(15):
            print(f"{count:6d}  {where}")
        print(f"\n== {name}: torch profiler, one step: {launches(model, optimizer, ids)}")
        print(f"\n== {name}: cProfile, one step, top {args.top} by own time")
        print(python_profile(model, optimizer, ids, args.top))
    print(f"\n== {name}: batch size (sequences of {SEQ} tokens per step)")
    print(f"{'batch':>5s} {'s/iter':>7s} {'tokens/s':>9s} {'peak GiB':>9s}")
    for batch in [int(x) for x in args.batches.split(",")]:
        ids = torch.randint(0, vocab, (batch, SEQ), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        try:
            per_iter = timed(model, optimizer, ids, args.steps)
        except torch.OutOfMemoryError as error:
            print(f"{batch:5d} out of memory: {str(error)[:100]}")
            break
        print(f"{batch:5d} {per_iter:7.3f} {batch * SEQ / per_iter:9.0f} "
              f"{torch.cuda.max_memory_allocated() / 2**30:9.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
