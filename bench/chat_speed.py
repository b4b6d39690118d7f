"""Chat speed on the GPU: time to first token and decode tokens/s at batch 1, 256 new tokens.

    python bench/chat_speed.py [--tokenizer DIR] [--model-dir /tmp/llama-7b-shape] [--json OUT]
    python bench/chat_speed.py --cpu     (the embedded default on CPU)

Merged model and base + adapter, bf16 and 4-bit, through the app's chat engine
(tuner.chat.stream_reply) with its fast decoding (static KV cache + CUDA graphs, tuner/decode.py, the
default on CUDA) and without it (its `generate` path, as before), against plain `generate` on the same
loaded model (the baseline). The generate rows decode --before-tokens tokens (their rate is steady);
the fast row also says for how many tokens its greedy output equals plain `generate`'s, and the load time.

Base + adapter in bf16 is merged into the base at load (tuner/chat.py); `adapter-unmerged` loads it as
before, a PEFT model (TUNER_MERGE_ADAPTER=0): the baseline of that change. In 4 bits it stays unmerged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

NEW = 256


def make_adapter(model_dir: Path, out: Path) -> Path:
    if (out / "adapter_config.json").exists():
        return out
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16, device_map="cuda")
    lora = LoraConfig(r=64, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"], task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(out)
    del base
    torch.cuda.empty_cache()
    return out


def _time_stream(chat, settings) -> tuple[float, float]:
    from tuner.chat import stream_reply

    start = time.perf_counter()
    first = None
    for text in stream_reply(chat, "Tell me about yourself.", settings=settings):
        if first is None and text:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    return first, (settings.max_new_tokens - 1) / (total - first)


def _time_slot_batch(chat) -> tuple[float, float]:
    """First token and tokens/s of one reply alone in tuner/slot_batching.py's batcher (same prompt as _time_stream)."""
    from tuner.batching import END
    from tuner.chat import prompt_token_ids, _stop_ids
    from tuner.decode import Sampling

    ids = prompt_token_ids(chat, "Tell me about yourself.")
    for new in (8, NEW):  # the first captures the step's graph
        request = chat.slot_batcher.submit(ids, Sampling(max_new_tokens=new, min_new_tokens=new), _stop_ids(chat))
        start = time.perf_counter()
        first, count = None, 0
        while request.tokens.get(timeout=300) is not END:
            count += 1
            if first is None:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
    return first, (count - 1) / (total - first)


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _label(kind: str, description: str, four_bit: bool) -> str:
    if kind == "adapter":
        how = "merged at load" if "merged at load" in description else "unmerged"
        name = f"base + adapter {how}"
    else:
        name = kind
    return f"{name}, {'4-bit' if four_bit else 'bf16'}"


def measure(kind: str, model_dir: Path | str, adapter: Path | None, four_bit: bool, before_tokens: int,
            label: str = "", merge_adapter: bool = True) -> list[tuple]:
    import torch

    from tuner.chat import GenerationSettings, load_chat_model, stream_reply

    started = time.perf_counter()
    os.environ["TUNER_MERGE_ADAPTER"] = "1" if merge_adapter else "0"
    # fast decoding is the default on CUDA only; asked for here on CPU too, to compare
    chat = load_chat_model(kind, str(model_dir), adapter, load_in_4bit=four_bit, fast_decode=True)
    load_s = time.perf_counter() - started
    label = label or _label(kind, chat.description, four_bit)
    print(f"{label}: loaded in {load_s:.1f} s, decoding: {chat.decoding}", flush=True)
    rows = []
    warm = GenerationSettings(max_new_tokens=8, min_new_tokens=8)
    for _ in stream_reply(chat, "Hello", settings=warm):  # warms up kernels and allocator
        pass
    first, rate = _time_stream(chat, GenerationSettings(max_new_tokens=NEW, min_new_tokens=NEW))
    rows.append((label, "app, fast decode", first, rate))
    if chat.slot_batcher:  # what a reply costs as a batch of one in the slot batcher (CUDA graphs, any batch)
        rows.append((label, "slot batch of one", *_time_slot_batch(chat)))
    before = GenerationSettings(max_new_tokens=before_tokens, min_new_tokens=before_tokens, fast_decode=False)
    first, rate = _time_stream(chat, before)  # the same model through generate: the engine before
    rows.append((label, "app, generate", first, rate))
    decoder = chat.decoder
    inputs = chat.tokenizer("Tell me about yourself.", return_tensors="pt").to(chat.model.device)
    _sync()
    start = time.perf_counter()
    chat.model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
    _sync()
    first = time.perf_counter() - start
    start = time.perf_counter()
    reference = chat.model.generate(**inputs, max_new_tokens=before_tokens, min_new_tokens=before_tokens,
                                    do_sample=False)
    _sync()
    total = time.perf_counter() - start
    rows.append((label, "plain generate", first, (before_tokens - 1) / (total - first)))
    rows[0] = rows[0] + (f"load {load_s:.1f} s; {chat.decoding}",)
    if decoder is not None:  # greedy agreement: the fast path's tokens against plain generate's
        from tuner.decode import Sampling

        ids = inputs["input_ids"][0].tolist()
        fast = list(decoder.decode(ids, Sampling(max_new_tokens=before_tokens, min_new_tokens=before_tokens)))
        expected = reference[0, len(ids):].tolist()
        same = next((i for i, (a, b) in enumerate(zip(fast, expected)) if a != b), len(expected))
        print(f"{label}: greedy tokens equal to plain generate for the first {same} of {len(expected)}", flush=True)
        rows[0] = rows[0] + (f"greedy = generate for {same}/{len(expected)}",)
    del chat, decoder
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rows


def _table(rows: list[tuple], header: bool = True) -> None:
    if header:
        print(f"{'model':36s} {'path':18s} {'first token s':>13s} {'decode tok/s':>12s}  note")
    for label, path, first, rate, *note in rows:
        print(f"{label:36s} {path:18s} {first:13.3f} {rate:12.1f}  {' '.join(note)}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the embedded default on this machine's CPU instead")
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--tokenizer", help="writes the model first when --model-dir has none (bench/multigpu.py)")
    parser.add_argument("--kinds", default="merged,adapter,adapter-unmerged,merged-4bit,adapter-4bit",
                        help="adapter: merged at load (bf16); adapter-unmerged: TUNER_MERGE_ADAPTER=0")
    parser.add_argument("--before-tokens", type=int, default=64,
                        help="new tokens for the generate rows (about 10 tokens/s there: the rate is steady)")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    if args.cpu:
        import os
        import platform

        from tuner.models import EMBEDDED_MODEL

        rows = measure("base", EMBEDDED_MODEL, None, False, args.before_tokens, "embedded, fp32")
        print(f"\nchat, embedded default (SmolLM2-135M), batch 1, {NEW} new tokens "
              f"(CPU x{os.cpu_count()}, {platform.machine()}, torch {torch.__version__})\n")
        _table(rows)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    model = Path(args.model_dir)
    if args.tokenizer:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from multigpu import make_model

        make_model(model, Path(args.tokenizer))
    adapter = make_adapter(model, Path("/tmp/adapter-7b-shape"))
    rows = []
    for name in args.kinds.split(","):
        kind, four_bit = name.split("-")[0], name.endswith("-4bit")
        done = len(rows)
        try:
            rows += measure(kind, model, adapter if kind == "adapter" else None, four_bit, args.before_tokens,
                            merge_adapter="unmerged" not in name)
        except Exception as error:  # noqa: BLE001 - one configuration failing should not lose the others
            import traceback

            traceback.print_exc()
            rows.append((name, f"failed: {type(error).__name__}: {error}"[:200], 0.0, 0.0))
        _table(rows[done:], header=False)  # as it goes: a run cut short by its time limit keeps these
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2))
    print(f"\nchat, 7B-shaped Llama, batch 1, {NEW} new tokens ({torch.cuda.get_device_name()})\n")
    _table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
