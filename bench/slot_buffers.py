"""Why batches of short replies step slower once the slot batcher's cache holds 512 positions (GPU): the same
step shapes replayed alone, with buffers of 256 positions and then of 512 (their first 256 positions are then a
strided view), and the eager step of 32 slots x 256 positions under the profiler in both.

    python bench/slot_buffers.py --model /tmp/llama-7b-shape
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = ((1, 256), (8, 256), (32, 256))


def _replays(batcher, shapes, steps: int = 50) -> dict:
    import torch

    times = {}
    with torch.inference_mode():
        for shape in shapes:
            batcher._positions.zero_()
            batcher._run_step(shape)  # captures and checks once
            torch.cuda.synchronize()
            graph, _ = batcher._graphs[shape]
            started = time.perf_counter()
            for _ in range(steps):
                graph.replay()
            torch.cuda.synchronize()
            times[shape] = 1000 * (time.perf_counter() - started) / steps
    return times


def _profile(batcher, shape, top: int = 6) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        batcher._positions.zero_()
        batcher._forward_step(*shape)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                batcher._forward_step(*shape)
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=top, max_name_column_width=70)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="/tmp/llama-7b-shape")
    args = parser.parse_args()
    os.environ["TUNER_BATCHING"] = "0"  # the chat's own slot batcher is not made; this one is
    from tuner.chat import load_chat_model
    from tuner.slot_batching import SlotBatcher

    chat = load_chat_model("base", args.model)
    print(f"decoding: {chat.decoding}", flush=True)
    batcher = SlotBatcher(chat.model, chat.lock, graphs=True)
    batcher._grow(32, 256)
    short = _replays(batcher, SHAPES)
    short_profile = _profile(batcher, (32, 256))
    batcher._grow(32, 512)
    long = _replays(batcher, SHAPES + ((32, 512),))
    long_profile = _profile(batcher, (32, 256))
    print(f"\n{'step (slots, positions)':24s} {'buffers of 256':>15s} {'buffers of 512':>15s}   (GPU ms a replay)")
    for shape in SHAPES + ((32, 512),):
        print(f"{str(shape):24s} {short.get(shape, float('nan')):15.2f} {long[shape]:15.2f}")
    print(f"\neager (32, 256), buffers of 256:\n{short_profile}\neager (32, 256), buffers of 512:\n{long_profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
