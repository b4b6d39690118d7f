"""Before Start: roughly how much GPU memory a training needs and how long it will take.

Rough on purpose: parameters come from the model's config.json (or from its name, for a hub id that is
not downloaded), memory from what QLoRA / LoRA keep on the device, time from throughputs measured by
``bench/`` (H100: 7B QLoRA ≈ 4,000 tokens/s; 2-core CPU: the embedded 135M LoRA ≈ 100 tokens/s).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from tuner.spec import TrainSpec, resolve_optimizer

GIB = 2**30
H100_TOKENS_PER_S_7B = 4000.0  # bench/results/h100-train-speed.txt
CPU2_TOKENS_PER_S_135M = 100.0  # bench/results/cpu2-e2e-lora.txt: 80 iterations x 4 x ~50 tokens in 162 s
START_SECONDS = {"cpu": 20.0, "gpu": 60.0}  # start -> first iteration, same files


@dataclass
class ModelShape:
    parameters: float
    hidden: int
    layers: int
    vocab: int


@dataclass
class Estimate:
    parameters: float
    memory_gib: float  # on the device (GPU; RAM on a CPU)
    tokens: int
    seconds: float
    device: str  # "gpu" or "cpu"

    def describe(self) -> str:
        minutes = self.seconds / 60
        duration = f"{self.seconds:.0f} s" if self.seconds < 120 else f"{minutes:.0f} min"
        where = "GPU memory" if self.device == "gpu" else "memory"
        return (f"{self.parameters / 1e9:.2f} B parameters · about {self.memory_gib:.1f} GiB of {where} · "
                f"{self.tokens:,} tokens to train · about {duration}")


def _shape_from_config(config: dict) -> ModelShape | None:
    hidden = config.get("hidden_size")
    layers = config.get("num_hidden_layers")
    vocab = config.get("vocab_size")
    if not (hidden and layers and vocab):
        return None
    inter = config.get("intermediate_size") or 4 * hidden
    heads = config.get("num_attention_heads") or 1
    kv_heads = config.get("num_key_value_heads") or heads
    kv = hidden * kv_heads // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * inter
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return ModelShape(layers * per_layer + embeddings, hidden, layers, vocab)


_SIZE_IN_NAME = re.compile(r"(\d+(?:[._]\d+)?)\s*([bm])\b", re.IGNORECASE)


def _shape_from_name(name: str) -> ModelShape | None:
    match = None
    for match in _SIZE_IN_NAME.finditer(name.replace("-", " ")):
        pass
    if match is None:
        return None
    number = float(match.group(1).replace("_", "."))
    parameters = number * (1e9 if match.group(2).lower() == "b" else 1e6)
    hidden = int(4096 * math.sqrt(parameters / 7e9)) or 512
    return ModelShape(parameters, hidden, max(1, int(32 * (parameters / 7e9) ** 0.33)), 100_000)


def model_shape(model_path: str) -> ModelShape | None:
    """The shape of a local model folder, or a guess from a hub id such as ``Qwen/Qwen2.5-7B-Instruct``."""
    config = Path(model_path) / "config.json"
    if config.is_file():
        try:
            shape = _shape_from_config(json.loads(config.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            shape = None
        if shape:
            return shape
    return _shape_from_name(model_path)


def estimate_training(spec: TrainSpec, shape: ModelShape, tokens_per_epoch: int, on_gpu: bool) -> Estimate:
    """Memory (weights + LoRA state + activations with gradient checkpointing) and time of ``spec``."""
    weight_bytes = 0.55 if spec.method == "qlora" else (4 if not on_gpu else 2)
    lora_parameters = shape.layers * 7 * spec.lora_r * 2 * shape.hidden
    tokens_per_step = spec.max_length * spec.batch_size if spec.pack_to_max_length else \
        min(spec.max_length, 512) * spec.batch_size
    activations = tokens_per_step * shape.hidden * shape.layers * 2 * 2  # checkpointed layer inputs, bf16
    if spec.offload_activations:
        activations = activations * 2 / shape.layers  # in host memory but the one in use and the next
    logits = tokens_per_step * shape.vocab * 4 * 2  # fp32 logits and their gradient
    # fp32 weight, gradient, two Adam states
    lora_bytes = 4 + 4 + (8 if resolve_optimizer(spec, cuda_available=on_gpu) == "adamw" else 2)
    memory = shape.parameters * weight_bytes + lora_parameters * lora_bytes + activations + logits + 0.5 * GIB
    tokens = tokens_per_epoch * spec.max_epochs
    if on_gpu:
        rate = H100_TOKENS_PER_S_7B * 7e9 / shape.parameters * max(1, spec.gpus)
    else:
        rate = CPU2_TOKENS_PER_S_135M * 135e6 / shape.parameters
    seconds = START_SECONDS["gpu" if on_gpu else "cpu"] + tokens / rate
    return Estimate(shape.parameters, memory / GIB, tokens, seconds, "gpu" if on_gpu else "cpu")
