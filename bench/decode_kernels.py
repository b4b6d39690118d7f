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
    args = parser.parse_args()
    if args.cpu:
        return cpu_rows()
    import torch

    from chat_speed import _time_slot_batch
    from tuner import decode_kernels
    from tuner.chat import _prepare_fast_decode, load_chat_model

    if args.tokenizer:
        from multigpu import make_model

        make_model(Path(args.model_dir), Path(args.tokenizer))
    os.environ[decode_kernels.ENV] = "0"  # the levers are applied here, one by one
    chat = load_chat_model("merged", args.model_dir, None, load_in_4bit=args.four_bit, fast_decode=False)
    model = chat.model
    reference = decode_kernels._probe_logits(model)
    rows, baseline_tokens = [], None
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
            slot_first, slot_rate = _time_slot_batch(chat)
            first, rate, tokens = _decoder_rate(chat)
            baseline_tokens = baseline_tokens or tokens
            same = next((i for i, (a, b) in enumerate(zip(tokens, baseline_tokens)) if a != b), len(tokens))
            rows.append((label, slot_rate, slot_first, rate, first, error, same, note or "nothing applied"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
