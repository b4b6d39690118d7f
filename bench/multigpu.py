"""The app's training path on 1 GPU against N GPUs with DeepSpeed, on a 7B-shaped model.

    python bench/multigpu.py --tokenizer DIR [--gpus 2] [--deepspeed deepspeed_zero2] [--json OUT]

A Llama-2-7B-shaped model (vocab of the tokenizer given) with random weights is written once to
--model-dir (no weights can be downloaded). Each run is a real job: the config the spec renders, run
by `xtuner train` (NPROC_PER_NODE and --deepspeed for several GPUs), NF4 QLoRA r=64 on every linear
layer, packed 2048-token sequences, batch 1. The 1-GPU run accumulates N steps, so both see the
same tokens per optimizer step. Prints tokens/s per GPU, peak memory (rank 0) and the first losses;
then cancels a running N-GPU job and checks that no rank is left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def make_model(model_dir: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    if (model_dir / "config.json").exists():
        return model_dir
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=4096, intermediate_size=11008,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                         max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         torch_dtype="bfloat16")
    torch.manual_seed(seed)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(model_dir)
    del model
    torch.cuda.empty_cache()
    return model_dir


def run_job(spec, name: str, cancel_after: int | None = None) -> dict:
    from tuner.jobs import JobState, cancel_job, create_job, start_job, wait_job
    from tuner.processes import job_processes

    job = create_job(spec, name)
    start = time.time()
    start_job(job)
    if cancel_after is not None:
        while (job.progress().latest is None or job.progress().latest.iteration < cancel_after):
            if job.status().state.finished:
                break
            time.sleep(1)
        ranks = len(job_processes(job.dir))
        status = cancel_job(job, grace_seconds=20)
        time.sleep(2)
        return {"name": name, "state": status.state.value, "processes_before_cancel": ranks,
                "processes_after_cancel": len(job_processes(job.dir))}
    status = wait_job(job, timeout=1800, poll=2)
    progress = job.progress()
    result = {"name": name, "state": status.state.value, "reason": status.reason, "wall_s": time.time() - start}
    if status.state != JobState.SUCCEEDED and not progress.iterations:
        print(job.log_tail(60))
        return result
    # XTuner logs mmengine's running mean over the last 10 iterations: from the 13th on it no longer holds the
    # first, slow ones (start-up, allocator warm-up); shorter jobs report their last mean, warm-up included
    steady = [e.seconds_per_iter for e in progress.iterations[12:] if e.seconds_per_iter] or \
        [e.seconds_per_iter for e in progress.iterations[-1:] if e.seconds_per_iter]
    per_iter = statistics.median(steady)
    result.update(iterations=progress.latest.total, seconds_per_iter=per_iter,
                  tokens_per_s_per_gpu=spec.max_length * spec.batch_size / per_iter,
                  peak_memory_gib=max((e.memory_mb or 0) for e in progress.iterations) / 1024,
                  first_losses=[e.loss for e in progress.iterations[:5]])
    shutil.copyfile(job.log_path, Path(os.environ.get("OUT", tempfile.gettempdir())) / f"{name}.log")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="a folder with a tokenizer (the embedded model's)")
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--gpus", type=int, default=2)
    parser.add_argument("--deepspeed", default="deepspeed_zero2")
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-multigpu-"))

    from tuner.data import self_cognition_records, write_jsonl
    from tuner.spec import spec_for_model

    t0 = time.time()
    model = make_model(Path(args.model_dir), Path(args.tokenizer))
    print(f"model ready in {time.time() - t0:.0f} s", flush=True)
    data = write_jsonl(self_cognition_records("Alice", count=args.records),
                       Path(os.environ["TUNER_HOME"]) / "data.jsonl")
    common = dict(data_files=[str(data)], method="qlora", precision="bf16", max_length=2048,
                  pack_to_max_length=True, batch_size=1, max_epochs=1, lr=2e-4, lora_r=64, lora_alpha=16,
                  lora_dropout=0.1, save_steps=100000, evaluation_freq=100000, evaluation_max_new_tokens=4,
                  evaluation_inputs=["Who are you?"], warmup_ratio=0.0, template="qwen_chat", seed=0)
    results = [
        run_job(spec_for_model(str(model), gpus=1, accumulative_counts=args.gpus, **common), "1gpu"),
        run_job(spec_for_model(str(model), gpus=args.gpus, deepspeed=args.deepspeed, accumulative_counts=1,
                               **common), f"{args.gpus}gpu-{args.deepspeed}"),
    ]
    cancel = run_job(spec_for_model(str(model), gpus=args.gpus, deepspeed=args.deepspeed, **common),
                     "cancel-check", cancel_after=2)
    print(f"\n{'run':28s} {'iters':>6s} {'s/iter':>8s} {'tok/s/GPU':>10s} {'peak GiB':>9s}  first losses")
    for r in results:
        if "seconds_per_iter" not in r:
            print(f"{r['name']:28s} {r['state']}: {r.get('reason', '')}")
            continue
        print(f"{r['name']:28s} {r['iterations']:6d} {r['seconds_per_iter']:8.3f} {r['tokens_per_s_per_gpu']:10.0f} "
              f"{r['peak_memory_gib']:9.2f}  {', '.join(f'{x:.4f}' for x in r['first_losses'])}")
    if all("seconds_per_iter" in r for r in results):
        base, multi = results
        print(f"\nper-GPU throughput ratio {multi['tokens_per_s_per_gpu'] / base['tokens_per_s_per_gpu']:.2f}, "
              f"total {args.gpus * multi['tokens_per_s_per_gpu'] / base['tokens_per_s_per_gpu']:.2f}x; "
              f"first-loss difference {abs(multi['first_losses'][0] - base['first_losses'][0]):.4f}")
    print(f"cancel of a {args.gpus}-GPU job: {cancel}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": results, "cancel": cancel}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
