"""The spec's ``kernels`` lever: how it resolves, and how it reaches the model XTuner builds.

Liger's kernels are Triton GPU kernels, so nothing here runs them; what is checked is that the training
process patches the model it should, when it should (in a fresh interpreter: the patch is global).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.kernels import ENV, KERNEL_CHOICES, liger_available, resolve_kernels
from tuner.xtuner_compat import patched_environment

ROOT = Path(__file__).resolve().parents[2]


def test_auto_means_liger_only_with_a_gpu_and_the_package():
    assert resolve_kernels("none", cuda_available=True) == "none"
    assert resolve_kernels("auto", cuda_available=False) == "none"
    assert resolve_kernels("auto", cuda_available=True) == ("liger" if liger_available() else "none")
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        resolve_kernels("liger", cuda_available=False)
    assert set(KERNEL_CHOICES) == {"auto", "liger", "none"}


def _run(code: str, kernels: str) -> str:
    env = patched_environment()
    env[ENV] = kernels
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


_BUILD = """
import transformers
config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, max_position_embeddings=64)
model = transformers.LlamaForCausalLM(config)
import xtuner.model.sft as sft
sft.dispatch_modules(model)
print(type(model.model.norm).__name__, type(model.model.layers[0].mlp).__name__,
      transformers.models.llama.modeling_llama.LlamaForCausalLM.forward.__module__)
"""


@pytest.mark.skipif(not liger_available(), reason="liger-kernel is not installed")
def test_the_training_process_patches_the_model_xtuner_dispatches_with_liger():
    # sitecustomize (tuner/xtuner_boot) installs the hook at start-up; XTuner's dispatch_modules then
    # patches the model it has just built, before LoRA is added.
    out = _run(_BUILD, "liger")
    assert "tuner: Liger kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) for llama" in out
    norm, mlp, forward = out.splitlines()[-1].split()
    assert norm == "LigerRMSNorm" and mlp == "LigerSwiGLUMLP"
    assert forward.startswith("liger_kernel")  # the fused linear + cross-entropy forward
    norm, mlp, forward = _run(_BUILD, "none").splitlines()[-1].split()
    assert norm == "LlamaRMSNorm" and mlp == "LlamaMLP" and forward.startswith("transformers")


def test_the_job_runner_passes_the_resolved_choice(tmp_path, monkeypatch):
    from tuner import supervisor
    from tuner.spec import TrainSpec

    assert supervisor._kernels(TrainSpec(kernels="none")) == ("none", "")
    monkeypatch.setattr("tuner.kernels.liger_available", lambda: False)
    choice, note = supervisor._kernels(TrainSpec(kernels="liger"))
    assert choice == "none" and "liger-kernel" in note
    assert os.environ.get(ENV) is None  # nothing leaks into this process
