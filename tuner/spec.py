"""TrainSpec: every knob of the tutorial's parameter table, its presets, and the XTuner config it renders.

The rendered file is an ordinary XTuner config in the shape of XTuner's own (PART 1 Settings …
PART 5 Runtime): ``xtuner train config.py`` runs it unchanged. Every knob is a plain assignment in
PART 1, so a person can edit it as the tutorial teaches, and ``read_config`` can read it back.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuner.kernels import KERNEL_CHOICES, liger_available
from tuner.lora_training import CHOICES as LORA_KERNELS
from tuner.lora_training import FROZEN_CHOICES as FROZEN_DTYPES
from tuner.models import EMBEDDED_MODEL, guess_template, is_embedded

METHODS = ("qlora", "lora")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEEPSPEED_CHOICES = (
    "none",
    "deepspeed_zero1",
    "deepspeed_zero2",
    "deepspeed_zero2_offload",
    "deepspeed_zero3",
    "deepspeed_zero3_offload",
)
DEFAULT_EVALUATION_INPUTS = ("请做一下自我介绍", "Who are you?")
# TrainSpec.optimizer -> the class the config's optim_type names, and where it is imported from.
OPTIMIZER_CLASSES = {
    "adamw": ("torch.optim", "AdamW"),
    "adamw_8bit": ("bitsandbytes.optim", "AdamW8bit"),
    "paged_adamw_8bit": ("bitsandbytes.optim", "PagedAdamW8bit"),
}
# auto: paged_adamw_8bit where it can run (one CUDA GPU, bitsandbytes, no DeepSpeed), else adamw. H100, 7B-shaped,
# NF4 QLoRA r=64, packed 2048, kernels liger: peak 7.14 GiB against 8.33 with adamw, first five losses within
# 0.01 % (bench/results/h100-memory.txt).
OPTIMIZERS = ("auto",) + tuple(OPTIMIZER_CLASSES)


@dataclass
class TrainSpec:
    model: str = EMBEDDED_MODEL
    template: str = ""  # XTuner PROMPT_TEMPLATE name; empty: guessed from the model
    data_files: list[str] = field(default_factory=list)
    method: str = "lora"  # "qlora": 4-bit base (needs a CUDA GPU); "lora": base in `precision`
    precision: str = "auto"  # auto: bf16 on a GPU that has it, fp16 on other GPUs, fp32 on CPU
    max_length: int = 2048
    pack_to_max_length: bool = True
    batch_size: int = 1
    accumulative_counts: int = 16
    max_epochs: int = 3
    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    max_norm: float = 1.0
    warmup_ratio: float = 0.03
    save_steps: int = 500
    save_total_limit: int = 2
    evaluation_freq: int = 500
    evaluation_max_new_tokens: int = 128
    system: str = ""
    evaluation_inputs: list[str] = field(default_factory=lambda: list(DEFAULT_EVALUATION_INPUTS))
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    deepspeed: str = "none"
    gpus: int = 1
    dataloader_num_workers: int = 0
    map_num_proc: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    seed: int = 42
    log_interval: int = 1
    # Fused Triton kernels in the training process (tuner/kernels.py). liger: Liger Kernel (needs a CUDA GPU);
    # auto: Liger where there is a CUDA GPU and liger-kernel is installed; none: off. auto by default: on the H100
    # the step takes as long (0.58 s/iter either way) and peaks at 8.3 GiB instead of 9.2 (fused cross-entropy).
    kernels: str = "auto"
    # Memory levers (issue 12). optimizer: adamw (torch's AdamW); adamw_8bit / paged_adamw_8bit: bitsandbytes'
    # AdamW with its two states in 8 bits (the QLoRA paper's lever: about 1 GB less for LoRA r=64 on a 7B; the
    # paged one also lets CUDA move the states to host memory under memory pressure). Same lr, betas and
    # weight_decay. Needs a CUDA GPU; not combined with DeepSpeed (untested there). auto: see OPTIMIZERS.
    optimizer: str = "auto"
    # True: the inputs of the gradient-checkpointed layers wait in pinned host memory between the forward and
    # the backward pass (tuner/offload.py; about 1 GiB less for a 7B at 2048 tokens). Needs a CUDA GPU: on
    # another machine spec_problems refuses it (there the tensors are in host memory already).
    offload_activations: bool = False
    # Speed levers (issue 12, tuner/lora_training.py). lora_kernel: fused runs each group of sibling LoRA layers
    # (q/k/v, gate/up) as one autograd function with few, large kernels; peft: PEFT's own layers. auto: fused
    # (PEFT's under DeepSpeed ZeRO-3). frozen_dtype: the frozen weights peft upcasts to float32 (embeddings,
    # norms, lm_head; all of them for LoRA) go back to the compute dtype (compute) or stay float32 (fp32);
    # auto: compute when training in bf16.
    lora_kernel: str = "auto"
    frozen_dtype: str = "auto"

    @property
    def prompt_template(self) -> str:
        return self.template or guess_template(self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {', '.join(unknown)}")
        values = dict(data)
        if "betas" in values:
            values["betas"] = tuple(values["betas"])
        return cls(**values)

    def replace(self, **changes: Any) -> "TrainSpec":
        return dataclasses.replace(self, **changes)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> "TrainSpec":
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def spec_problems(spec: TrainSpec, cuda_available: bool | None = None) -> list[str]:
    """What is wrong with a spec, each as a sentence a person can act on. Empty when it is runnable."""
    problems = []
    if spec.method not in METHODS:
        problems.append(f"method must be one of {', '.join(METHODS)}, not {spec.method!r}.")
    if spec.precision not in PRECISIONS:
        problems.append(f"precision must be one of {', '.join(PRECISIONS)}, not {spec.precision!r}.")
    if spec.deepspeed not in DEEPSPEED_CHOICES:
        problems.append(f"deepspeed must be one of {', '.join(DEEPSPEED_CHOICES)}.")
    if spec.kernels not in KERNEL_CHOICES:
        problems.append(f"kernels must be one of {', '.join(KERNEL_CHOICES)}, not {spec.kernels!r}.")
    for name in ("max_length", "batch_size", "accumulative_counts", "max_epochs", "save_steps",
                 "evaluation_freq", "lora_r", "lora_alpha", "gpus", "log_interval"):
        if getattr(spec, name) < 1:
            problems.append(f"{name} must be at least 1.")
    if not 0 < spec.lr < 1:
        problems.append("lr must be between 0 and 1 (the tutorial uses 2e-4).")
    if not 0 <= spec.warmup_ratio < 1:
        problems.append("warmup_ratio must be between 0 and 1.")
    if not 0 <= spec.lora_dropout < 1:
        problems.append("lora_dropout must be between 0 and 1.")
    if not spec.data_files:
        problems.append("No training data: give at least one data file.")
    for path in spec.data_files:
        if not Path(path).is_file():
            problems.append(f"Data file not found: {path}")
    if spec.deepspeed != "none" and importlib.util.find_spec("deepspeed") is None:
        problems.append("DeepSpeed is not installed here: pip install deepspeed==0.16.2, or choose none.")
    if cuda_available is None:
        cuda_available = _cuda_available()
    if not cuda_available:
        if spec.method == "qlora":
            problems.append("QLoRA loads the model in 4 bits, which needs a CUDA GPU; this machine has "
                            "none. Choose LoRA.")
        if spec.precision in ("fp16", "bf16"):
            problems.append(f"{spec.precision} training needs a GPU here; choose fp32 or auto.")
        if spec.deepspeed != "none" or spec.gpus > 1:
            problems.append("DeepSpeed and several GPUs need CUDA GPUs; this machine has none.")
        if spec.kernels == "liger":
            problems.append("Liger kernels need a CUDA GPU; this machine has none. Choose auto or none.")
    elif spec.kernels == "liger" and not liger_available():
        problems.append("Liger kernels need the liger-kernel package: pip install liger-kernel==0.5.10, "
                        "or choose auto or none.")
    problems += _memory_lever_problems(spec, cuda_available)
    return problems


def _memory_lever_problems(spec: TrainSpec, cuda_available: bool) -> list[str]:
    problems = []
    if spec.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer must be one of {', '.join(OPTIMIZERS)}, not {spec.optimizer!r}.")
    elif spec.optimizer not in ("adamw", "auto"):
        if not cuda_available:
            problems.append(f"optimizer {spec.optimizer!r} runs bitsandbytes' 8-bit optimizer, which needs a CUDA "
                            "GPU; this machine has none. Choose adamw.")
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(f"optimizer {spec.optimizer!r} needs the bitsandbytes package: "
                            "pip install bitsandbytes==0.50.2, or choose adamw.")
        if spec.deepspeed != "none":
            problems.append(f"optimizer {spec.optimizer!r} is not combined with DeepSpeed here (ZeRO keeps the "
                            "optimizer states its own way): choose optimizer adamw or deepspeed none.")
    if spec.lora_kernel not in LORA_KERNELS:
        problems.append(f"lora_kernel must be one of {', '.join(LORA_KERNELS)}, not {spec.lora_kernel!r}.")
    if spec.frozen_dtype not in FROZEN_DTYPES:
        problems.append(f"frozen_dtype must be one of {', '.join(FROZEN_DTYPES)}, not {spec.frozen_dtype!r}.")
    if not isinstance(spec.offload_activations, bool):
        problems.append("offload_activations must be true or false.")
    elif spec.offload_activations and not cuda_available:
        problems.append("offload_activations moves activations from GPU memory to host memory, which needs a "
                        "CUDA GPU; this machine has none. Turn offload_activations off.")
    return problems


def has_cuda() -> bool:
    """Whether this machine has a CUDA GPU (the UI asks this to choose defaults)."""
    return _cuda_available()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_optimizer(spec: TrainSpec, cuda_available: bool | None = None) -> str:
    """The optimizer ``spec.optimizer`` means on this machine (``auto``: see OPTIMIZERS)."""
    if spec.optimizer != "auto":
        return spec.optimizer
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    # one GPU: 8-bit states with several processes (DDP) are untested here
    usable = (cuda_available and spec.deepspeed == "none" and spec.gpus <= 1
              and importlib.util.find_spec("bitsandbytes") is not None)
    return "paged_adamw_8bit" if usable else "adamw"


def resolve_precision(spec: TrainSpec, cuda_available: bool | None = None) -> str:
    if spec.precision != "auto":
        return spec.precision
    if cuda_available is None:
        cuda_available = _cuda_available()
    if not cuda_available:
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


# --------------------------------------------------------------------------------------------------
# Presets: the models users of the tutorial know, with defaults that fit each.

@dataclass(frozen=True)
class Preset:
    label: str
    model: str
    settings: dict[str, Any]
    cpu_settings: dict[str, Any] = field(default_factory=dict)  # on top of settings where there is no CUDA GPU


_EMBEDDED_SETTINGS = dict(
    method="lora", max_length=256, pack_to_max_length=False, batch_size=4, accumulative_counts=1, max_epochs=3, lr=1e-3,
    lora_r=16, lora_alpha=32, lora_dropout=0.05, warmup_ratio=0.05, save_steps=50,
    save_total_limit=2, evaluation_freq=25, evaluation_max_new_tokens=48,
)
# The embedded model on a CPU (what every new user runs first; bench/e2e.py, bench/results/cpu2-e2e-lora.txt):
# one epoch instead of three (40 steps for the 160 records the Data tab makes) still teaches the name, also to
# questions the data never asks. Not packed: without varlen attention a packed sequence lets the model copy
# the name from the conversation before it, and one packed epoch left XTuner's samples naming someone else.
# No warm-up: a warm-up that mmengine rounds to one iteration leaves the learning rate at 1e-5 x lr for the
# whole run. One evaluation question: before training XTuner lets the untrained model answer each with 50
# tokens. map_num_proc=1: two worker processes to tokenize a few hundred records cost more than they save.
_EMBEDDED_CPU_SETTINGS = dict(
    max_epochs=1, warmup_ratio=0.0, evaluation_freq=12, evaluation_inputs=["Who are you?"], map_num_proc=1,
)
# 7B QLoRA: the tutorial's 16 packed 2048-token sequences per optimizer step, as 2 per step x 8 accumulated
# (the tutorial: 1 x 16). Same optimizer steps; twice the tokens per kernel launch, which is what the GPU waits
# for (issue 12, bench/results/h100-train-levers.txt: H100, 7B-shaped Llama, r=64, the app's path 7,400-8,100
# tokens/s at 7.39 GiB peak with the speed levers, 2.0-2.3x a plain transformers + peft loop at batch 1 and 9.84
# GiB; at batch 1 the app makes 4,800 tokens/s at 6.96 GiB; batch 4 peaks at 9.44 GiB, over an 8 GB card).
_QLORA_7B = dict(method="qlora", max_length=2048, batch_size=2, accumulative_counts=8, max_epochs=3,
                 lr=2e-4, lora_r=64, lora_alpha=16, lora_dropout=0.1, save_steps=500,
                 evaluation_freq=500, evaluation_max_new_tokens=256)
_QLORA_SMALL = dict(_QLORA_7B, batch_size=4, accumulative_counts=4)

PRESETS: dict[str, Preset] = {
    "smollm2-135m (embedded)": Preset("SmolLM2-135M-Instruct (embedded, runs on CPU)", EMBEDDED_MODEL,
                                      _EMBEDDED_SETTINGS, _EMBEDDED_CPU_SETTINGS),
    "internlm2_5-7b-chat": Preset("InternLM2.5-7B-Chat", "internlm/internlm2_5-7b-chat", _QLORA_7B),
    "internlm2-chat-1_8b": Preset("InternLM2-Chat-1.8B", "internlm/internlm2-chat-1_8b", _QLORA_SMALL),
    "qwen2.5-7b-instruct": Preset("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct", _QLORA_7B),
    "qwen2.5-1.5b-instruct": Preset("Qwen2.5-1.5B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct", _QLORA_SMALL),
    "llama-3-8b-instruct": Preset("Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", _QLORA_7B),
}


def spec_for_model(model: str = EMBEDDED_MODEL, *, cuda_available: bool | None = None, **overrides: Any) -> TrainSpec:
    """A spec with the defaults that fit ``model``: a preset's if it has one (with its CPU settings on a
    machine without a CUDA GPU), else the tutorial's."""
    settings: dict[str, Any] = {}
    for preset in PRESETS.values():
        if preset.model == model or (is_embedded(model) and is_embedded(preset.model)):
            settings = dict(preset.settings)
            if preset.cpu_settings and not (_cuda_available() if cuda_available is None else cuda_available):
                settings.update(preset.cpu_settings)
    settings.update(model=model, **overrides)
    return TrainSpec(**settings)


# --------------------------------------------------------------------------------------------------
# Rendering and reading back

_CONFIG_HEADER = '''\
# XTuner config written by tuner (the fine-tuning studio). Run it with:
#     xtuner train {config_name}
# It is an ordinary XTuner config: edit PART 1 as the XTuner tutorial teaches.
import torch
from datasets import load_dataset
from mmengine.dataset import DefaultSampler
from mmengine.hooks import (CheckpointHook, DistSamplerSeedHook, IterTimerHook,
                            LoggerHook, ParamSchedulerHook)
from mmengine.optim import AmpOptimWrapper, CosineAnnealingLR, LinearLR, OptimWrapper
from peft import LoraConfig
from torch.optim import AdamW
{optimizer_import}from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from xtuner.dataset import process_hf_dataset
from xtuner.dataset.collate_fns import default_collate_fn
from xtuner.dataset.map_fns import template_map_fn_factory
from xtuner.engine.hooks import (DatasetInfoHook, EvaluateChatHook,
                                 VarlenAttnArgsToMessageHubHook)
from xtuner.engine.runner import TrainLoop
from xtuner.model import SupervisedFinetune
from xtuner.utils import PROMPT_TEMPLATE
'''

_CONFIG_BODY = '''
#######################################################################
#                      PART 2  Model & Tokenizer                      #
#######################################################################
torch_dtype = {{"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}}[precision]

tokenizer = dict(
    type=AutoTokenizer.from_pretrained,
    pretrained_model_name_or_path=pretrained_model_name_or_path,
    trust_remote_code=True,
    padding_side="right",
)

model = dict(
    type=SupervisedFinetune,
    use_varlen_attn=use_varlen_attn,
    llm=dict(
        type=AutoModelForCausalLM.from_pretrained,
        pretrained_model_name_or_path=pretrained_model_name_or_path,
        trust_remote_code=True,
        torch_dtype=torch_dtype,
{quantization}    ),
    lora=dict(
        type=LoraConfig,
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
    ),
)

#######################################################################
#                      PART 3  Dataset & Dataloader                   #
#######################################################################
train_dataset = dict(
    type=process_hf_dataset,
    dataset=dict(type=load_dataset, path="json", data_files=data_files),
    tokenizer=tokenizer,
    max_length=max_length,
    dataset_map_fn=None,
    template_map_fn=dict(type=template_map_fn_factory, template=prompt_template),
    remove_unused_columns=True,
    shuffle_before_pack=True,
    pack_to_max_length=pack_to_max_length,
    use_varlen_attn=use_varlen_attn,
    map_num_proc=map_num_proc,
)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=dataloader_num_workers,
    dataset=train_dataset,
    sampler=dict(type=DefaultSampler, shuffle=True),
    collate_fn=dict(type=default_collate_fn, use_varlen_attn=use_varlen_attn),
)

#######################################################################
#                    PART 4  Scheduler & Optimizer                    #
#######################################################################
optim_wrapper = dict(
{optim_wrapper}    optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay),
    clip_grad=dict(max_norm=max_norm, error_if_nonfinite=False),
    accumulative_counts=accumulative_counts,
)

param_scheduler = [
{warmup}    dict(
        type=CosineAnnealingLR,
        eta_min=0.0,
        by_epoch=True,
        begin=warmup_ratio * max_epochs,
        end=max_epochs,
        convert_to_iter_based=True,
    ),
]

train_cfg = dict(type=TrainLoop, max_epochs=max_epochs)

#######################################################################
#                           PART 5  Runtime                           #
#######################################################################
custom_hooks = [
    dict(type=DatasetInfoHook, tokenizer=tokenizer),
    dict(
        type=EvaluateChatHook,
        tokenizer=tokenizer,
        every_n_iters=evaluation_freq,
        evaluation_inputs=evaluation_inputs,
        system=SYSTEM,
        prompt_template=prompt_template,
        max_new_tokens=evaluation_max_new_tokens,
    ),
]

if use_varlen_attn:
    custom_hooks += [dict(type=VarlenAttnArgsToMessageHubHook)]

default_hooks = dict(
    timer=dict(type=IterTimerHook),
    logger=dict(type=LoggerHook, log_metric_by_epoch=False, interval=log_interval),
    param_scheduler=dict(type=ParamSchedulerHook),
    checkpoint=dict(
        type=CheckpointHook,
        by_epoch=False,
        interval=save_steps,
        max_keep_ckpts=save_total_limit,
    ),
    sampler_seed=dict(type=DistSamplerSeedHook),
)

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
    dist_cfg=dict(backend="nccl"),
)

visualizer = None
log_level = "INFO"
load_from = None
resume = False
randomness = dict(seed=seed, deterministic=False)
log_processor = dict(by_epoch=False)
'''

_WARMUP = '''\
    dict(
        type=LinearLR,
        start_factor=1e-5,
        by_epoch=True,
        begin=0,
        end=warmup_ratio * max_epochs,
        convert_to_iter_based=True,
    ),
'''
_NO_WARMUP = "    # no warm-up: warmup_ratio * max_epochs is less than one iteration of this data set\n"

_QUANTIZATION = '''\
        quantization_config=dict(
            type=BitsAndBytesConfig,
            load_in_4bit=True,
            load_in_8bit=False,
            llm_int8_threshold=6.0,
            llm_int8_has_fp16_weight=False,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        ),
'''

# (variable in the config, spec field); the order is the order of PART 1.
_SETTINGS = (
    ("# Model", None),
    ("pretrained_model_name_or_path", "model"),
    ("method", "method"),
    ("precision", "precision"),
    ("use_varlen_attn", None),
    ("# Data", None),
    ("data_files", "data_files"),
    ("prompt_template", "template"),
    ("max_length", "max_length"),
    ("pack_to_max_length", "pack_to_max_length"),
    ("# Scheduler & Optimizer", None),
    ("batch_size", "batch_size"),
    ("accumulative_counts", "accumulative_counts"),
    ("dataloader_num_workers", "dataloader_num_workers"),
    ("map_num_proc", "map_num_proc"),
    ("max_epochs", "max_epochs"),
    ("optim_type", "optimizer"),
    ("lr", "lr"),
    ("betas", "betas"),
    ("weight_decay", "weight_decay"),
    ("max_norm", "max_norm"),
    ("warmup_ratio", "warmup_ratio"),
    ("# LoRA", None),
    ("lora_r", "lora_r"),
    ("lora_alpha", "lora_alpha"),
    ("lora_dropout", "lora_dropout"),
    ("# Save", None),
    ("save_steps", "save_steps"),
    ("save_total_limit", "save_total_limit"),
    ("log_interval", "log_interval"),
    ("# Evaluate the generation performance during the training", None),
    ("evaluation_freq", "evaluation_freq"),
    ("evaluation_max_new_tokens", "evaluation_max_new_tokens"),
    ("SYSTEM", "system"),
    ("evaluation_inputs", "evaluation_inputs"),
    ("# Launch (read by `xtuner train` flags, not by the runner)", None),
    ("deepspeed", "deepspeed"),
    ("gpus", "gpus"),
    ("seed", "seed"),
    ("# Speed and memory (applied by tuner's job runner inside the training process, not by XTuner)", None),
    ("kernels", "kernels"),
    ("offload_activations", "offload_activations"),
)
_COMMENTS = {
    "method": "  # qlora: 4-bit base model; lora: base in `precision`",
    "save_total_limit": "  # Maximum checkpoints to keep (-1 means unlimited)",
    "max_norm": "  # grad clip",
    "batch_size": "  # per_device",
    "kernels": "  # auto: Liger Kernel's fused Triton kernels on a CUDA GPU when installed; liger; none",
    "optim_type": "  # AdamW (torch); AdamW8bit, PagedAdamW8bit: bitsandbytes' 8-bit states (CUDA)",
    "offload_activations": "  # True: checkpointed layers' inputs wait in pinned host memory (CUDA)",
}


def warmup_iterations(spec: TrainSpec, iters_per_epoch: int | None) -> float:
    """Warm-up length in iterations; unknown epoch length counts as long enough."""
    if spec.warmup_ratio <= 0:
        return 0
    if iters_per_epoch is None:
        return float("inf")
    return int(spec.warmup_ratio * spec.max_epochs * iters_per_epoch)


def render_config(spec: TrainSpec, config_name: str = "config.py", model_path: str | None = None,
                  iters_per_epoch: int | None = None) -> str:
    """The XTuner config text for ``spec``. ``model_path`` replaces the model name (the embedded
    default's converted folder, for instance). With ``iters_per_epoch`` known, a warm-up shorter
    than one iteration is left out: mmengine refuses a scheduler that ends where it begins."""
    precision = resolve_precision(spec)
    values = spec.to_dict()
    values["model"] = model_path or spec.model
    values["precision"] = precision
    module, optim_class = OPTIMIZER_CLASSES.get(resolve_optimizer(spec), OPTIMIZER_CLASSES["adamw"])
    optimizer_import = "" if module == "torch.optim" else f"from {module} import {optim_class}\n"
    lines = [_CONFIG_HEADER.format(config_name=config_name, optimizer_import=optimizer_import), "",
             "#" * 71, "#                          PART 1  Settings                           #", "#" * 71]
    for variable, name in _SETTINGS:
        if variable.startswith("#"):
            lines.append(variable)
        elif variable == "prompt_template":
            lines.append(f"prompt_template = PROMPT_TEMPLATE.{spec.prompt_template}")
        elif variable == "use_varlen_attn":
            lines.append("use_varlen_attn = False")
        elif variable == "optim_type":
            lines.append(f"optim_type = {optim_class}{_COMMENTS[variable]}")
        else:
            value = values[name]
            if isinstance(value, list):
                value = list(value)
            lines.append(f"{variable} = {value!r}{_COMMENTS.get(variable, '')}")
    if precision == "fp32":
        optim = "    type=OptimWrapper,\n"
    else:
        dtype = "float16" if precision == "fp16" else "bfloat16"
        optim = f'    type=AmpOptimWrapper,\n    loss_scale="dynamic",\n    dtype="{dtype}",\n'
    body = _CONFIG_BODY.format(
        quantization=_QUANTIZATION if spec.method == "qlora" else "",
        optim_wrapper=optim,
        warmup=_WARMUP if warmup_iterations(spec, iters_per_epoch) >= 1 else _NO_WARMUP,
    )
    return "\n".join(lines) + "\n" + body


_OPTIMIZER_BY_CLASS = {optim_class: name for name, (_, optim_class) in OPTIMIZER_CLASSES.items()}


def read_config(text: str) -> TrainSpec:
    """The spec a config of ours (or one edited by hand in PART 1) describes."""
    tree = ast.parse(text)
    found: dict[str, Any] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        variable = node.targets[0].id
        if variable == "prompt_template" and isinstance(node.value, ast.Attribute):
            found["template"] = node.value.attr
            continue
        if variable == "optim_type" and isinstance(node.value, ast.Name):
            found[variable] = _OPTIMIZER_BY_CLASS.get(node.value.id, node.value.id)
            continue
        try:
            found[variable] = ast.literal_eval(node.value)
        except ValueError:
            continue
    values: dict[str, Any] = {}
    for variable, name in _SETTINGS:
        if name is None:
            continue
        key = "template" if variable == "prompt_template" else variable
        if key in found:
            values[name] = found[key]
    if "pretrained_model_name_or_path" not in found:
        raise ValueError("Not a tuner config: PART 1 has no pretrained_model_name_or_path.")
    if "method" not in found:
        values["method"] = "qlora" if "quantization_config" in text else "lora"
    return TrainSpec.from_dict(values)
