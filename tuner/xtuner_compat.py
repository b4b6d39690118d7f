"""The one place where XTuner (and what it stands on) is patched to run here. Each patch says why.

The patches reach the training process through ``tuner/xtuner_boot/sitecustomize.py``: the job runner
puts that folder on ``PYTHONPATH``, so every Python process that ``xtuner train`` starts (one, or one
per GPU under torchrun) applies them at start-up, and ``xtuner train CONFIG`` itself runs unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

BOOT_DIR = Path(__file__).parent / "xtuner_boot"
_ENABLE = "TUNER_XTUNER_PATCHES"


def apply_patches() -> None:
    _cpu_bf16_probe()
    quiet_known_noise()
    _training_kernels()
    _lora_training()
    _activation_offload()


def _lora_training() -> None:
    # The spec's `lora_kernel` and `frozen_dtype` levers (tuner/lora_training.py): fused LoRA layers and frozen
    # weights back in bf16 after peft's upcast, when the job runner sets TUNER_LORA_KERNEL / TUNER_FROZEN_DTYPE.
    from tuner.lora_training import install_training_hooks

    install_training_hooks()


def _activation_offload() -> None:
    # The spec's `offload_activations` lever (tuner/offload.py): the checkpointed layers' inputs wait in pinned
    # host memory, when the job runner sets TUNER_OFFLOAD_ACTIVATIONS=1 for this process.
    from tuner.offload import install_training_hooks

    install_training_hooks()


def _training_kernels() -> None:
    # The spec's `kernels` lever (tuner/kernels.py): Liger's Triton kernels patched into the model XTuner
    # builds, when the job runner sets TUNER_KERNELS=liger for this process.
    from tuner.kernels import install_training_hooks

    install_training_hooks()


def quiet_known_noise() -> None:
    # bitsandbytes 0.50 on a CPU with AVX512-BF16 tries to fetch a kernel from the Hugging Face hub at
    # import and warns when it cannot; the built-in kernel is used instead, so the warning is noise.
    import logging

    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _cpu_bf16_probe() -> None:
    # XTuner 0.2.0's SupervisedFinetune asks `get_torch_device().is_bf16_supported()`, which on a
    # machine without a GPU is `torch.cpu`, and torch.cpu has no such function: the model cannot be
    # built at all. bf16 is only used there for flash attention, which a CPU does not have.
    import torch

    if not hasattr(torch.cpu, "is_bf16_supported"):
        torch.cpu.is_bf16_supported = lambda including_emulation=True: False


def patched_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which XTuner processes start with the patches applied."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(BOOT_DIR), str(BOOT_DIR.parent.parent), env.get("PYTHONPATH", "")) if p
    )
    env[_ENABLE] = "1"
    # mmengine 0.10.6 resumes with a bare torch.load(); since torch 2.6 that means weights_only=True,
    # which refuses mmengine's own checkpoints (they hold its message hub). These processes load only
    # the checkpoints their job wrote, so the pre-2.6 behaviour is restored for them alone.
    env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    return env


def boot() -> None:
    if os.environ.get(_ENABLE) == "1":
        apply_patches()
