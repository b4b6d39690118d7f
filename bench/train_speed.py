"""Training speed: the app's own path against a plain transformers + peft (+ bitsandbytes) loop.

    python bench/train_speed.py --tokenizer DIR [--steps 30] [--levers liger,bf16,...] [--app none,liger] [--json OUT]
    python bench/train_speed.py --tokenizer DIR --no-plain --app liger,liger+8bit,liger+8bit+offload+r16   (memory)
    python bench/train_speed.py --cpu [--json OUT]     (the embedded default on CPU, a couple of minutes)

Both on the same Llama-2-7B-shaped model (random weights, written once by bench/multigpu.py's
make_model), NF4 QLoRA r=64 on all linear layers, packed 2048-token sequences, batch 1, gradient
checkpointing, SDPA attention, bf16 compute:
  (a) app: the config TrainSpec renders, run by `xtuner train` as a job;
  (b) plain: a hand-written loop with the same settings (the baseline).
Prints tokens/s, peak memory, the ratio, GPU kernel ms per step (profiled on the plain loop's last step)
and GPU busy % (kernel time / wall time per step); '–' where a figure is unknown (the app rows have no
profile). Writes JSON with --json.

--levers adds rows: the plain loop with each speed lever added in turn (from the same LoRA weights, on
the same batches, so the loss difference to the plain loop is a correctness check): liger (Liger Kernel's
RMSNorm, RoPE, SwiGLU, fused linear cross-entropy: TrainSpec.kernels), bf16 (frozen unquantized weights
kept in bf16 instead of peft's fp32 upcast), noreentrant (non-reentrant checkpointing), compile
(torch.compile of each decoder layer), fused (tuner/lora_training.py: sibling LoRA layers as one autograd
function: TrainSpec.lora_kernel).

--app gives one app row per entry; an entry is '+'-joined tokens, each a TrainSpec override (see APP_TOKENS):
none / auto / liger (kernels), peft / fused (lora_kernel), fp32w / bf16w (frozen_dtype fp32 / compute), 8bit
(optimizer=adamw_8bit), paged8bit (optimizer=paged_adamw_8bit), offload (offload_activations), r16 (lora_r=16; any
rN), b2 (batch_size=2: twice the tokens per step; any bN), a2 (accumulative_counts=2; any aN). App rows also show the
GPU memory nvidia-smi saw in use during the job over what was in use before it ('GPU used': the whole training
process, CUDA context, allocator cache and paged optimizer states included, which 'peak GiB', XTuner's
torch.cuda.max_memory_allocated, leaves out), and as 'loss diff' the largest difference of their first losses to the
first app row's.
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


def load_qlora(model_dir: Path, seed: int = 0):
    """The plain loop's model: NF4 base, LoRA r=64 on every linear layer, gradient checkpointing."""
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
    return model


def cell(value, spec: str, suffix: str = "") -> str:
    """A table cell: ``value`` formatted with ``spec``, or '–' (right-aligned to the same width) when unknown."""
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    if value is None:
        return f"{'–':>{int(width) + len(suffix)}s}" if width else "–"
    return f"{value:{spec}}{suffix}"


def gpu_busy_percent(row: dict) -> float | None:
    """Profiled GPU kernel time per step over wall time per step, in percent; None where either is unknown."""
    gpu_ms, seconds = row.get("gpu_kernel_ms_per_iter"), row.get("seconds_per_iter")
    if gpu_ms is None or not seconds:
        return None
    return 100 * gpu_ms / (seconds * 1000)


# Levers tried on the plain loop, applied in the order given (each on top of the ones before).
def lever_liger(model) -> str:
    from tuner.kernels import apply_liger

    return apply_liger(model.get_base_model())


def lever_bf16(model) -> str:
    """Keep the unquantized weights (embeddings, norms, lm_head) in bf16: prepare_model_for_kbit_training
    casts them to fp32, which makes the whole residual stream and the MLP activations fp32."""
    import torch

    moved = 0
    for name, param in model.named_parameters():
        if param.dtype == torch.float32 and not param.requires_grad:
            param.data = param.data.to(torch.bfloat16)
            moved += param.numel()
    return f"{moved / 1e6:.0f}M frozen fp32 parameters back to bf16"


def lever_compile(model) -> str:
    """torch.compile each decoder layer (the checkpointed unit)."""
    layers = model.get_base_model().model.layers
    for layer in layers:
        layer.compile()
    return f"{len(layers)} decoder layers compiled"


def lever_noreentrant(model) -> str:
    model.get_base_model().gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return "non-reentrant checkpointing"


def lever_fused(model) -> str:
    """tuner/lora_training.py: each group of sibling LoRA layers as one autograd function (TrainSpec.lora_kernel)."""
    from tuner.lora_training import fuse_lora

    return f"{fuse_lora(model)} LoRA layers fused"


LEVERS = {"liger": lever_liger, "bf16": lever_bf16, "compile": lever_compile, "noreentrant": lever_noreentrant,
          "fused": lever_fused}


def train_step(model, optimizer, ids):
    """One step of the plain loop: bf16 autocast, gradient clipping at 1.0, AdamW. Returns the loss."""
    import torch

    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def run_steps(model, batches: list, seed: int = 0, profile: bool = False) -> dict:
    """Train from the model's current LoRA weights with a fresh AdamW: times, losses, peak memory."""
    import torch

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    gpu_ms = None
    for index, ids in enumerate(batches):
        torch.cuda.synchronize()
        start = time.perf_counter()
        profiler = None
        if profile and index == len(batches) - 1:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            profiler.__enter__()
        loss = train_step(model, optimizer, ids)
        torch.cuda.synchronize()
        if profiler is not None:
            profiler.__exit__(None, None, None)
            try:
                gpu_ms = sum(e.self_device_time_total for e in profiler.key_averages()) / 1000
            except Exception as error:  # noqa: BLE001 - a profiler detail must not lose the row
                print(f"profiler: {error}")
            continue
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    per_iter = statistics.median(times[3:]) if len(times) > 4 else statistics.median(times)
    return {"seconds_per_iter": per_iter, "tokens_per_s": SEQ / per_iter, "first_iter_s": times[0],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30, "losses": losses,
            "gpu_kernel_ms_per_iter": gpu_ms}


def plain_rows(model_dir: Path, steps: int, levers: list[str], seed: int = 0, profile: bool = True,
               compile_limit_s: int = 300) -> list[dict]:
    """The plain loop, then the loop with each lever added in turn, all from the same LoRA weights
    and on the same batches: speed, memory and the loss curve of each."""
    import signal

    import torch

    model = load_qlora(model_dir, seed)
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}
    vocab = model.config.vocab_size
    generator = torch.Generator(device="cuda").manual_seed(seed)
    batches = [torch.randint(0, vocab, (1, SEQ), device="cuda", generator=generator) for _ in range(steps)]
    rows, applied = [], []
    for lever in ["plain"] + levers:
        name = "plain loop" if lever == "plain" else "plain + " + "+".join(applied + [lever])
        note = ""
        try:
            if lever != "plain":
                note = LEVERS[lever](model)
            model.load_state_dict(start_state, strict=False)
            if lever == "compile":
                signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("compile too slow")))
                signal.alarm(compile_limit_s)
            try:
                row = run_steps(model, batches, seed, profile)
            finally:
                signal.alarm(0)
        except Exception as error:  # noqa: BLE001 - a lever that fails is a finding, not the end of the run
            import traceback

            traceback.print_exc()
            rows.append({"name": name, "error": f"{type(error).__name__}: {error}"[:300]})
            print(f"{name}: FAILED {error}", flush=True)
            if lever != "plain":
                break
            continue
        applied.append(lever) if lever != "plain" else None
        row.update(name=name, note=note)
        if rows and "losses" in rows[0]:
            base = rows[0]["losses"]
            row["max_loss_diff"] = max(abs(a - b) for a, b in zip(base, row["losses"]))
        rows.append(row)
        print(f"{name}: {row['seconds_per_iter']:.3f} s/iter, {row['tokens_per_s']:.0f} tok/s, "
              f"{row['peak_memory_gib']:.2f} GiB, GPU kernels {cell(row['gpu_kernel_ms_per_iter'], '.0f')} ms "
              f"(busy {cell(gpu_busy_percent(row), '.0f')}%), "
              f"losses {[round(x, 4) for x in row['losses'][:4]]}, first iter {row['first_iter_s']:.1f} s "
              f"({note})", flush=True)
    del model
    torch.cuda.empty_cache()
    return rows


def mark_first_loss_diffs(apps: list[dict]) -> None:
    """Each app row's largest difference of its first losses to the first app row's (a correctness check)."""
    base = apps[0].get("first_losses") if apps else None
    for row in apps[1:]:
        if base and row.get("first_losses"):
            row["max_loss_diff"] = max(abs(a - b) for a, b in zip(base, row["first_losses"]))


def plain_loop(model_dir: Path, steps: int, seed: int = 0) -> dict:
    return plain_rows(model_dir, steps, [], seed, profile=False)[0]


# --app tokens: each one a TrainSpec override; an app row's entry joins them with '+'.
APP_TOKENS = {
    "none": {"kernels": "none"}, "auto": {"kernels": "auto"}, "liger": {"kernels": "liger"},
    "8bit": {"optimizer": "adamw_8bit"}, "paged8bit": {"optimizer": "paged_adamw_8bit"},
    "offload": {"offload_activations": True},
    "peft": {"lora_kernel": "peft"}, "fused": {"lora_kernel": "fused"},
    "fp32w": {"frozen_dtype": "fp32"}, "bf16w": {"frozen_dtype": "compute"},
}


def app_overrides(entry: str) -> dict:
    """The TrainSpec overrides an --app entry such as ``liger+paged8bit+offload+r16`` stands for."""
    overrides: dict = {}
    for token in entry.split("+"):
        if token in APP_TOKENS:
            overrides.update(APP_TOKENS[token])
        elif token[:1] == "r" and token[1:].isdigit():
            overrides["lora_r"] = int(token[1:])
        elif token[:1] == "b" and token[1:].isdigit():
            overrides["batch_size"] = int(token[1:])
        elif token[:1] == "a" and token[1:].isdigit():
            overrides["accumulative_counts"] = int(token[1:])
        else:
            raise ValueError(f"unknown --app token {token!r} in {entry!r}: use {', '.join(APP_TOKENS)}, rN, bN or aN")
    return overrides


class GpuMemoryInUse:
    """The most GPU memory nvidia-smi reports in use while this is open, over what was in use when it opened."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s, self.most_mib, self.before_mib = interval_s, None, None

    @staticmethod
    def _used_mib() -> float | None:
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                                  os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]],
                                 capture_output=True, text=True, timeout=10).stdout
            return float(out.split()[0])
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return None

    def __enter__(self):
        import threading

        self.before_mib = self._used_mib()
        self._stop = threading.Event()

        def poll():
            while not self._stop.wait(self.interval_s):
                used = self._used_mib()
                if used is not None:
                    self.most_mib = max(self.most_mib or 0.0, used)

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def gib(self) -> float | None:
        if self.most_mib is None or self.before_mib is None:
            return None
        return (self.most_mib - self.before_mib) / 1024


def app_path(model_dir: Path, records: int, entry: str = "auto") -> dict:
    from multigpu import run_job

    from tuner.data import self_cognition_records, write_jsonl
    from tuner.spec import spec_for_model

    data = write_jsonl(self_cognition_records("Alice", count=records), Path(os.environ["TUNER_HOME"]) / "d.jsonl")
    settings = dict(method="qlora", precision="bf16", max_length=SEQ, pack_to_max_length=True, batch_size=1,
                    accumulative_counts=1, max_epochs=1, lr=2e-4, lora_r=64, lora_alpha=16, lora_dropout=0.1,
                    save_steps=100000, evaluation_freq=100000, evaluation_max_new_tokens=4,
                    evaluation_inputs=["Who are you?"], warmup_ratio=0.0, template="qwen_chat", seed=0)
    settings.update(app_overrides(entry))
    spec = spec_for_model(str(model_dir), data_files=[str(data)], **settings)
    with GpuMemoryInUse() as in_use:
        result = run_job(spec, f"app-xtuner-{entry.replace('+', '-')}")
    result["name"] = f"app (xtuner train), {entry}"
    result["tokens_per_s"] = result.pop("tokens_per_s_per_gpu", 0.0)
    result["gpu_used_gib"] = in_use.gib()
    result["overrides"] = app_overrides(entry)
    return result


# ------------------------------------------------------------------------------------------------ CPU
CPU_SEQ = 256


def cpu_spec_settings() -> dict:
    """The embedded default (its preset: LoRA r=16 on every linear layer, fp32 on CPU), packed to 256
    tokens at batch 1 so that both paths see the same tokens per step."""
    return dict(method="lora", precision="auto", max_length=CPU_SEQ, pack_to_max_length=True, batch_size=1,
                accumulative_counts=1, max_epochs=1, warmup_ratio=0.0, save_steps=100000, evaluation_freq=100000,
                evaluation_max_new_tokens=4, evaluation_inputs=["Who are you?"], seed=0, kernels="none")


def cpu_plain_loop(steps: int, seed: int = 0) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tuner.models import EMBEDDED_MODEL, resolve_model
    from tuner.spec import spec_for_model

    spec = spec_for_model(EMBEDDED_MODEL, **cpu_spec_settings())
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32)
    model.gradient_checkpointing_enable()  # as XTuner does
    model.enable_input_require_grads()
    lora = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, bias="none",
                      task_type="CAUSAL_LM", target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.lr)
    times, losses = [], []
    for _ in range(steps):
        ids = torch.randint(0, model.config.vocab_size, (1, CPU_SEQ))
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    per_iter = statistics.median(times[2:])
    return {"name": "plain loop", "seconds_per_iter": per_iter, "tokens_per_s": CPU_SEQ / per_iter,
            "peak_memory_gib": 0.0, "losses": losses}


def cpu_app_path(records: int) -> dict:
    from multigpu import run_job

    from tuner.data import self_cognition_records, write_jsonl
    from tuner.models import EMBEDDED_MODEL
    from tuner.spec import spec_for_model

    data = write_jsonl(self_cognition_records("Alice", count=records), Path(os.environ["TUNER_HOME"]) / "d.jsonl")
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], **cpu_spec_settings())
    result = run_job(spec, "app-xtuner-cpu")
    result["name"] = "app (xtuner train)"
    result["tokens_per_s"] = result.pop("tokens_per_s_per_gpu", 0.0)
    result.setdefault("peak_memory_gib", 0.0)
    return result


def cpu_main(args) -> int:
    import platform

    import torch

    plain = cpu_plain_loop(args.steps)
    app = cpu_app_path(args.records)
    print(f"\ntraining, embedded default (SmolLM2-135M, LoRA r=16, fp32), packed {CPU_SEQ}, batch 1 "
          f"(CPU x{os.cpu_count()}, {platform.processor() or platform.machine()}, torch {torch.__version__})\n")
    print(f"{'path':22s} {'s/iter':>8s} {'tokens/s':>9s} {'vs plain':>9s}")
    for row in (plain, app):
        if not row.get("tokens_per_s"):
            print(f"{row['name']:22s} failed: {row.get('reason') or row.get('state')}")
            continue
        ratio = row["tokens_per_s"] / plain["tokens_per_s"] if plain.get("tokens_per_s") else None
        print(f"{row['name']:22s} {cell(row.get('seconds_per_iter'), '8.3f')} {cell(row['tokens_per_s'], '9.0f')} "
              f"{cell(ratio, '8.2f', 'x')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "app": app}, indent=2))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the embedded default on this machine's CPU instead")
    parser.add_argument("--tokenizer", help="for the 7B-shaped model (the GPU table): a tokenizer folder")
    parser.add_argument("--model-dir", default="/tmp/llama-7b-shape")
    parser.add_argument("--steps", type=int, default=None, help="plain-loop steps (30 on the GPU, 8 on CPU)")
    parser.add_argument("--records", type=int, default=None,
                        help="self-cognition records for the app's job (2400: about 40 packed steps on the GPU)")
    parser.add_argument("--levers", default="", help="comma-separated, added in turn to the plain loop: "
                        + ", ".join(LEVERS))
    parser.add_argument("--app", default="none,auto", help="app rows, comma-separated; each '+'-joined tokens: "
                        + ", ".join(APP_TOKENS) + ", rN (lora_r=N); e.g. liger,liger+8bit+offload; empty: none")
    parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                        help="the plain loop rows (--no-plain: app rows only, compared with the first of them)")
    parser.add_argument("--compile-limit", type=int, default=300, help="seconds the compile lever may take")
    parser.add_argument("--json")
    parser.add_argument("--app-json", help="reuse the app rows of an earlier run")
    args = parser.parse_args()
    os.environ.setdefault("TUNER_HOME", tempfile.mkdtemp(prefix="tuner-speed-"))
    if args.cpu:
        args.steps, args.records = args.steps or 8, args.records or 80
        return cpu_main(args)
    if not args.tokenizer:
        parser.error("--tokenizer is required for the GPU table")
    args.steps, args.records = args.steps or 30, args.records or 2400
    from multigpu import make_model

    import torch

    entries = [x for x in args.app.split(",") if x]
    for entry in entries:
        app_overrides(entry)  # an unknown token fails now, not after the plain loop
    model = make_model(Path(args.model_dir), Path(args.tokenizer))
    levers = [x for x in args.levers.split(",") if x]
    plain = plain_rows(model, args.steps, levers, compile_limit_s=args.compile_limit) if args.plain else []
    if args.app_json:
        apps = json.loads(Path(args.app_json).read_text())["app"]
    else:
        apps = []
        for entry in entries:  # a line per row as it ends: a run cut off by its time limit keeps the rows done
            apps.append(app_path(model, args.records, entry))
            row = apps[-1]
            print(f"row done: {row['name']}: {cell(row.get('seconds_per_iter'), '.3f')} s/iter, peak "
                  f"{cell(row.get('peak_memory_gib'), '.2f')} GiB, GPU used {cell(row.get('gpu_used_gib'), '.2f')} "
                  f"GiB, {row.get('state')}, first losses {row.get('first_losses')}", flush=True)
    mark_first_loss_diffs(apps)
    print(f"\ntraining, 7B-shaped Llama, NF4 QLoRA (r=64 unless rN), packed {SEQ}, batch 1 "
          f"({torch.cuda.get_device_name()})\n")
    versus = "vs plain" if plain else "vs row 1"
    print(f"{'path':48s} {'s/iter':>7s} {'tokens/s':>9s} {'peak GiB':>9s} {'GPU used':>9s} {versus:>9s} "
          f"{'GPU ms':>7s} {'GPU busy %':>10s}  loss diff")
    rows = plain + apps
    base = rows[0].get("tokens_per_s") if rows else None
    for row in rows:
        if "error" in row or not row.get("tokens_per_s"):
            print(f"{row['name']:48s} failed: {row.get('error') or row.get('reason') or row.get('state')}")
            continue
        ratio = row["tokens_per_s"] / base if base else None
        gpu = row.get("gpu_kernel_ms_per_iter")
        print(f"{row['name']:48s} {cell(row.get('seconds_per_iter'), '7.3f')} {cell(row['tokens_per_s'], '9.0f')} "
              f"{cell(row.get('peak_memory_gib'), '9.2f')} {cell(row.get('gpu_used_gib'), '9.2f')} "
              f"{cell(ratio, '8.2f', 'x')} {cell(gpu, '7.0f')} "
              f"{cell(gpu_busy_percent(row), '10.0f')}  {cell(row.get('max_loss_diff'), '.4f')}")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "app": apps}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
