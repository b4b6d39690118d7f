"""Training speed on the GPU: the app's own path against a plain transformers + peft + bitsandbytes loop.

    python bench/train_speed.py --tokenizer DIR [--steps 30] [--json OUT]

Both on the same Llama-2-7B-shaped model (random weights, written once by bench/multigpu.py's
make_model), NF4 QLoRA r=64 on all linear layers, packed 2048-token sequences, batch 1, gradient
checkpointing, SDPA attention, bf16 compute:
  (a) app: the config TrainSpec renders, run by `xtuner train` as a job;
  (b) plain: a hand-written loop with the same settings (the baseline).
Prints tokens/s, peak memory and the ratio; writes JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

SEQ = 2048


def plain_loop(model_dir: Path, steps: int, seed: int = 0) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(seed)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16,
                               bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=quant, torch_dtype=torch.bfloat16,
                                                 attn_implementation="sdpa", device_map="cuda")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    lora = LoraConfig(r=64, lora_alpha=16, lora_dropout=0.1, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()  # from_pretrained leaves eval mode, where checkpointing is off
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    vocab = model.config.vocab_size
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (1, SEQ), device="cuda")
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    per_iter = statistics.median(times[3:])
    return {"name": "plain loop", "seconds_per_iter": per_iter, "tokens_per_s": SEQ / per_iter,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "first_losses": losses[:3]}


def app_path(model_dir: Path, records: int) -> dict:
    from multigpu import run_job

    from tuner.data import self_cognition_records, write_jsonl
    from tuner.spec import spec_for_model

    data = write_jsonl(self_cognition_records("Alice", count=records), Path(os.environ["TUNER_HOME"]) / "d.jsonl")
    spec = spec_for_model(str(model_dir), data_files=[str(data)], method="qlora", precision="bf16", max_length=SEQ,
                          pack_to_max_length=True, batch_size=1, accumulative_counts=1, max_epochs=1, lr=2e-4,
                          lora_r=64, lora_alpha=16, lora_dropout=0.1, save_steps=100000, evaluation_freq=100000,
                          evaluation_max_new_tokens=4, evaluation_inputs=["Who are you?"], warmup_ratio=0.0,
                          template="qwen_chat")
    result = run_job(spec, "app-xtuner")
    result["name"] = "app (xtuner train)"
    result["tokens_per_s"] = result.pop("tokens_per_s_per_gpu", 0.0)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--records", type=int, default=2400, help="self-cognition records (about 40 packed steps)")
    parser.add_argument("--json")
    parser.add_argument("--app-json", help="reuse the app row of an earlier run")
    args = parser.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-speed-"))
    from multigpu import make_model

    import torch

    model = make_model(Path(args.model_dir), Path(args.tokenizer))
    app = json.loads(Path(args.app_json).read_text())["app"] if args.app_json else app_path(model, args.records)
    plain = plain_loop(model, args.steps)
    print(f"\ntraining, 7B-shaped Llama, NF4 QLoRA r=64, packed {SEQ}, batch 1 ({torch.cuda.get_device_name()})\n")
    print(f"{'path':22s} {'s/iter':>8s} {'tokens/s':>9s} {'peak GiB':>9s}")
    for row in (plain, app):
        print(f"{row['name']:22s} {row.get('seconds_per_iter', 0):8.3f} {row.get('tokens_per_s', 0):9.0f} "
              f"{row.get('peak_memory_gib', 0):9.2f}")
    if app.get("tokens_per_s") and plain.get("tokens_per_s"):
        print(f"\napp / plain: {app['tokens_per_s'] / plain['tokens_per_s']:.2f}x tokens/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "app": app}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
