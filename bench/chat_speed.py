"""Chat speed on the GPU: time to first token and decode tokens/s at batch 1, 256 new tokens.

    python bench/chat_speed.py [--model-dir /tmp/llama-7b-shape]

Merged model and base + adapter (PEFT, unmerged), bf16 and 4-bit, through the app's chat engine
(tuner.chat.stream_reply), against plain `generate` on the same loaded model (the baseline).
"""

from __future__ import annotations

import argparse
import json
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


def measure(kind: str, model_dir: Path, adapter: Path | None, four_bit: bool) -> list[tuple]:
    import torch

    from tuner.chat import GenerationSettings, load_chat_model, stream_reply

    chat = load_chat_model(kind, str(model_dir), adapter, load_in_4bit=four_bit)
    label = f"{'merged' if kind == 'merged' else 'base + adapter'}, {'4-bit' if four_bit else 'bf16'}"
    settings = GenerationSettings(max_new_tokens=NEW, min_new_tokens=NEW)
    rows = []
    warm = GenerationSettings(max_new_tokens=8, min_new_tokens=8)
    for _ in stream_reply(chat, "Hello", settings=warm):  # warms up kernels and allocator
        pass
    for _ in range(1):
        start = time.perf_counter()
        first = None
        for text in stream_reply(chat, "Tell me about yourself.", settings=settings):
            if first is None and text:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
    rows.append((label, "app chat engine", first, (NEW - 1) / (total - first)))
    inputs = chat.tokenizer("Tell me about yourself.", return_tensors="pt").to("cuda")
    for _ in range(1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        chat.model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
        torch.cuda.synchronize()
        first = time.perf_counter() - start
        start = time.perf_counter()
        chat.model.generate(**inputs, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
        torch.cuda.synchronize()
        total = time.perf_counter() - start
    rows.append((label, "plain generate", first, (NEW - 1) / (total - first)))
    del chat
    torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--json")
    args = parser.parse_args()
    import torch

    model = Path(args.model_dir)
    adapter = make_adapter(model, Path("/tmp/adapter-7b-shape"))
    rows = []
    for kind, four_bit in (("merged", False), ("adapter", False), ("merged", True), ("adapter", True)):
        rows += measure(kind, model, adapter if kind == "adapter" else None, four_bit)
    print(f"\nchat, 7B-shaped Llama, batch 1, {NEW} new tokens ({torch.cuda.get_device_name()})\n")
    print(f"{'model':24s} {'path':18s} {'first token s':>13s} {'decode tok/s':>12s}")
    for label, path, first, rate in rows:
        print(f"{label:24s} {path:18s} {first:13.3f} {rate:12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
