"""Faster training kernels, switched on by the spec's ``kernels`` setting.

``liger``: Liger Kernel's Triton kernels (RMSNorm, RoPE, SwiGLU, and the fused linear + cross-entropy
that never materialises the logits) patched into the model inside the training process. They need a
CUDA GPU and the ``liger-kernel`` package; ``auto`` uses them when both are there, for the model types
Liger supports (Llama, Qwen2, Mistral, Gemma, Phi-3, ...; not InternLM2's remote code, which stays as is).

The job runner passes the resolved choice to ``xtuner train`` in ``TUNER_KERNELS``; the start-up hook in
``tuner/xtuner_boot/sitecustomize.py`` (see ``tuner.xtuner_compat``) then patches the model right after
XTuner's own module dispatch, before LoRA is added.
"""

from __future__ import annotations

import importlib.util
import os

KERNEL_CHOICES = ("auto", "liger", "none")
ENV = "TUNER_KERNELS"


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def resolve_kernels(choice: str, cuda_available: bool | None = None) -> str:
    """``liger`` or ``none``: what ``choice`` means on this machine."""
    if choice == "none":
        return "none"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    usable = cuda_available and liger_available()
    if choice == "liger" and not usable:
        raise RuntimeError("kernels = 'liger' needs a CUDA GPU and the liger-kernel package "
                           "(pip install liger-kernel==0.5.10); choose auto or none.")
    return "liger" if usable else "none"


def apply_liger(model) -> str:
    """Patch a loaded transformers model (before LoRA) with Liger's kernels; returns what was done."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        return f"no Liger kernels for model type {model_type!r}"
    apply(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=True)
    return f"Liger kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for {model_type}"


def install_training_hooks() -> None:
    """In a training process: apply what ``TUNER_KERNELS`` asks for to the model XTuner builds."""
    if os.environ.get(ENV, "none") != "liger":
        return
    after_import("xtuner.model.sft", _wrap_dispatch)


def _wrap_dispatch(sft) -> None:
    original = sft.dispatch_modules

    def dispatch_modules(model, use_varlen_attn=False):
        original(model, use_varlen_attn=use_varlen_attn)
        log(f"tuner: {apply_liger(model)}")

    sft.dispatch_modules = dispatch_modules


def log(message: str) -> None:
    """A line in the training log (mmengine's logger inside XTuner, else standard output)."""
    try:
        from mmengine import print_log

        print_log(message, "current")
    except ImportError:
        print(message, flush=True)


def after_import(name: str, callback) -> None:
    """Run ``callback(module)`` once ``name`` has been imported (now, if it already is)."""
    import sys

    if name in sys.modules:
        callback(sys.modules[name])
        return

    class Finder:
        @staticmethod
        def find_spec(fullname, path=None, target=None):
            if fullname != name:
                return None
            sys.meta_path.remove(Finder)
            spec = importlib.util.find_spec(fullname)
            if spec is None or spec.loader is None:
                return spec
            execute = spec.loader.exec_module

            def exec_module(module):
                execute(module)
                callback(module)

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder)
