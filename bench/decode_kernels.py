"""Chat at batch 1 on the GPU with tuner/decode_kernels.py's levers, each alone and together, in one process
on one loaded model: the baseline (the model's own kernels) first, then fused projections, Liger's norms and
rotary embedding, both. For each: the slot batcher's batch of one (every reply's path on CUDA) and the batch-1
decoder, 256 new tokens, and how the logits compare with the baseline's.

    python bench/decode_kernels.py [--model-dir /tmp/llama-7b-shape] [--tokenizer DIR] [--four-bit]
    python bench/decode_kernels.py --cpu     (the embedded model on CPU: fused projections or not, alternating)

On CPU only the fused projections apply (Liger needs CUDA); the rows there are the embedded model's greedy
``generate`` (batch 1) and one-token steps of a batch of 20, the unfused model and the fused one alternating.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

NEW = 256


def _decoder_rate(chat) -> tuple[float, float, list[int]]:
    import torch

    from tuner.chat import prompt_token_ids
    from tuner.decode import Sampling

    ids = prompt_token_ids(chat, "Tell me about yourself.")
    list(chat.decoder.decode(ids, Sampling(max_new_tokens=8, min_new_tokens=8)))
    torch.cuda.synchronize()
    started = time.perf_counter()
    first, tokens = None, []
    for token in chat.decoder.decode(ids, Sampling(max_new_tokens=NEW, min_new_tokens=NEW)):
        tokens.append(token)
        first = first or time.perf_counter() - started
    total = time.perf_counter() - started
    return first, (len(tokens) - 1) / (total - first), tokens


def _slot_reply(chat, least: int = NEW) -> tuple[float, float, float, float]:
    """One reply alone in the slot batcher: first token s, tokens/s, the longest gap between two tokens (ms), and
    tokens/s without that gap (a capture of a longer step in the middle of a reply shows there)."""
    from tuner.batching import END
    from tuner.chat import prompt_token_ids, _stop_ids
    from tuner.decode import Sampling

    ids = prompt_token_ids(chat, "Tell me about yourself.")
    for new in (8, NEW):
        request = chat.slot_batcher.submit(ids, Sampling(max_new_tokens=new, min_new_tokens=min(new, least)),
                                           _stop_ids(chat))
        start = time.perf_counter()
        stamps = []
        while request.tokens.get(timeout=300) is not END:
            stamps.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    total = stamps[-1] - stamps[0]
    return stamps[0], len(gaps) / total, 1000 * max(gaps), (len(gaps) - 1) / (total - max(gaps))


def _replay_ms(graphs: dict, positions, steps: int = 100) -> dict:
    """Milliseconds a step of each captured graph takes on the GPU alone (replayed back to back, no host work, at
    position 0: ``positions`` is the graphs' static position tensor)."""
    import torch

    times = {}
    with torch.inference_mode():
        for key, (graph, _) in sorted(graphs.items()):
            times[key] = _replay(graph, positions, steps)
    return times


def _replay(graph, positions, steps: int) -> float:
    import torch

    positions.zero_()
    graph.replay()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        graph.replay()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def _kernel_profile(chat, top: int = 8) -> str:
    """The batch-1 decoder's one-token step run eagerly under the profiler: kernels a step, their GPU time, and
    the kernels that take most of it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    decoder = chat.decoder
    cache = decoder._cache(512)
    step = lambda: decoder._forward(decoder._ids, decoder._position, cache)  # noqa: E731
    with torch.inference_mode():
        decoder._position.zero_()
        for _ in range(3):
            step()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                step()
            torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.device_time for e in kernels) / 5
    by_name: dict = {}
    for event in kernels:
        count, us = by_name.get(event.name, (0, 0.0))
        by_name[event.name] = (count + 1, us + event.device_time)
    lines = [f"  {len(kernels) // 5} kernels a step, {total_us / 1000:.2f} ms of GPU time a step"]
    for name, (count, us) in sorted(by_name.items(), key=lambda item: -item[1][1])[:top]:
        lines.append(f"  {us / 5 / 1000:7.3f} ms {count // 5:5d} x  {name[:100]}")
    return "\n".join(lines)


def _slot_profile(chat, top: int = 14) -> str:
    """A lone 96-token reply in the slot batcher under the profiler (host and GPU): where the host's time goes."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from tuner.batching import END
    from tuner.chat import prompt_token_ids, _stop_ids
    from tuner.decode import Sampling

    ids = prompt_token_ids(chat, "Tell me about yourself.")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], with_stack=True) as prof:
        started = time.perf_counter()
        request = chat.slot_batcher.submit(ids, Sampling(max_new_tokens=96, min_new_tokens=96), _stop_ids(chat))
        while request.tokens.get(timeout=300) is not END:
            pass
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.device_time for e in kernels) / 1e6
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)
    stacks = prof.key_averages(group_by_stack_n=8).table(sort_by="self_cpu_time_total", row_limit=4,
                                                         max_name_column_width=40)
    return f"  96 tokens in {wall:.3f} s, GPU busy {busy:.3f} s ({100 * busy / wall:.0f} %)\n{table}\n{stacks}"


def _release(chat) -> None:
    import torch

    if chat.slot_batcher:
        chat.slot_batcher.close()
    chat.slot_batcher, chat.decoder = None, None
    gc.collect()
    torch.cuda.empty_cache()


def cpu_rows(rounds: int = 3) -> int:
    import platform

    import torch
    from transformers import AutoModelForCausalLM

    from tuner import decode_kernels
    from tuner.models import EMBEDDED_MODEL, resolve_model

    model = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32).eval()
    torch.manual_seed(0)
    prompt = torch.randint(3, model.config.vocab_size, (1, 28))
    batch = torch.randint(3, model.config.vocab_size, (20, 40))

    def generate_rate() -> float:
        started = time.perf_counter()
        model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=64, min_new_tokens=64,
                       do_sample=False)
        return 64 / (time.perf_counter() - started)

    def batch_rate(steps: int = 20) -> float:
        with torch.no_grad():
            cache = model(batch, use_cache=True).past_key_values
            started = time.perf_counter()
            for _ in range(steps):
                cache = model(batch[:, -1:], past_key_values=cache, use_cache=True).past_key_values
            return steps * batch.shape[0] / (time.perf_counter() - started)

    generate_rate()  # warm-up
    rows = []
    for _ in range(rounds):
        decode_kernels.restore(model)
        plain = (generate_rate(), batch_rate())
        note = decode_kernels.speed_up_decoding(model)
        rows.append((*plain, generate_rate(), batch_rate()))
    print(f"\nembedded model (SmolLM2-135M, fp32), CPU x{os.cpu_count()} {platform.machine()}, torch {torch.__version__}; "
          f"fused: {note}\n")
    print(f"{'round':>5s} {'generate, own':>14s} {'generate, fused':>16s} {'batch 20, own':>14s} {'batch 20, fused':>16s}"
          "   (tokens/s)")
    for number, (generate_own, batch_own, generate_fused, batch_fused) in enumerate(rows, 1):
        print(f"{number:5d} {generate_own:14.1f} {generate_fused:16.1f} {batch_own:14.1f} {batch_fused:16.1f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the embedded model on this machine's CPU instead")
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--tokenizer", help="writes the model first when --model-dir has none (bench/multigpu.py)")
    parser.add_argument("--four-bit", action="store_true")
    parser.add_argument("--profile", action="store_true", help="each stage's eager step under the profiler too")
    parser.add_argument("--profile-slots", action="store_true",
                        help="a lone reply in the slot batcher under the profiler, with every lever on")
    parser.add_argument("--sync-debug", action="store_true",
                        help="where a lone slot reply synchronizes with the GPU, and its rate with min_new_tokens 0")
    parser.add_argument("--warm-slots", type=int, default=0,
                        help="a row more per stage: the slot batcher warmed up to this many positions")
    args = parser.parse_args()
    if args.cpu:
        return cpu_rows()
    import torch

    from tuner import decode_kernels
    from tuner.chat import _prepare_fast_decode, load_chat_model

    if args.tokenizer:
        from multigpu import make_model

        make_model(Path(args.model_dir), Path(args.tokenizer))
    os.environ[decode_kernels.ENV] = "0"  # the levers are applied here, one by one
    chat = load_chat_model("merged", args.model_dir, None, load_in_4bit=args.four_bit, fast_decode=False)
    model = chat.model
    reference = decode_kernels._probe_logits(model)
    rows, details, baseline_tokens = [], [], None
    stages = [("model's own kernels", None), ("fused projections", dict(fuse=True, liger=False)),
              ("fused + Liger norms, rotary", dict(fuse=False, liger=True)), ("Liger alone", "liger-alone")]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{'4-bit' if args.four_bit else 'bf16'} {args.model_dir}", flush=True)
    for label, lever in stages:
        try:
            if lever == "liger-alone":
                decode_kernels.restore(model)
                note = decode_kernels.speed_up_decoding(model, fuse=False, liger=True)
            elif lever:
                note = decode_kernels.speed_up_decoding(model, **lever)
            else:
                note = "-"
            error = float((decode_kernels._probe_logits(model) - reference).abs().max() / reference.abs().max())
            _prepare_fast_decode(chat, graphs=True)
            slot_first, slot_rate, gap, without_gap = _slot_reply(chat)
            first, rate, tokens = _decoder_rate(chat)
            baseline_tokens = baseline_tokens or tokens
            same = next((i for i, (a, b) in enumerate(zip(tokens, baseline_tokens)) if a != b), len(tokens))
            rows.append((label, slot_rate, slot_first, rate, first, error, same, note or "nothing applied"))
            replays = {f"decoder {k}": v for k, v in _replay_ms(chat.decoder._graphs, chat.decoder._position).items()}
            replays.update({f"slots {k}": v for k, v in _replay_ms(chat.slot_batcher._graphs, chat.slot_batcher._positions).items()
                            if k[0] == 1})
            details.append(f"{label}: slot reply's longest gap {gap:.0f} ms ({without_gap:.1f} tok/s without it); "
                           "GPU ms a step (graph replays): " + ", ".join(f"{k} {v:.2f}" for k, v in replays.items()))
            if args.profile:
                details.append(_kernel_profile(chat))
            if args.profile_slots and label == stages[2][0]:
                details.append(_slot_profile(chat))
            if args.sync_debug and label == stages[2][0]:
                import warnings

                torch.cuda.set_sync_debug_mode("warn")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    forced = _slot_reply(chat)
                    free = _slot_reply(chat, least=0)
                torch.cuda.set_sync_debug_mode(0)
                places = sorted({f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)})
                details.append(f"synchronizing calls in lone slot replies: {len(caught)} at {places}; without the sync "
                               f"check: min_new_tokens={NEW} {_slot_reply(chat)[1]:.1f} tok/s, min_new_tokens=0 "
                               f"{_slot_reply(chat, least=0)[1]:.1f} tok/s (forced {forced[1]:.1f}, free {free[1]:.1f} "
                               "under the check)")
            if args.warm_slots:
                chat.slot_batcher.warm_up(args.warm_slots)
                slot_first, slot_rate, gap, without_gap = _slot_reply(chat)
                rows.append((f"  slots warmed to {args.warm_slots}", slot_rate, slot_first, 0.0, 0.0, error, 0,
                             f"longest gap {gap:.0f} ms"))
        except Exception as failure:  # noqa: BLE001 - keep the other rows
            import traceback

            traceback.print_exc()
            rows.append((label, 0.0, 0.0, 0.0, 0.0, float("nan"), 0, f"failed: {failure}"[:120]))
        print(rows[-1], flush=True)
        _release(chat)
    print(f"\n{'levers':30s} {'slot batch of one':>17s} {'first s':>8s} {'batch-1 decoder':>15s} {'first s':>8s} "
          f"{'logits rel. err':>15s} {'greedy = base':>13s}  note")
    for label, slot_rate, slot_first, rate, first, error, same, note in rows:
        print(f"{label:30s} {slot_rate:13.1f} tok/s {slot_first:8.3f} {rate:11.1f} tok/s {first:8.3f} "
              f"{error:15.4f} {same:6d}/{NEW:<6d}  {note}", flush=True)
    print("\n" + "\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
