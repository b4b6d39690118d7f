"""`python -m tuner.lora_training` on the real embedded model: fused LoRA layers give PEFT's loss and gradients
(all 420 LoRA tensors of its 210 layers), and the model is left with PEFT's forward."""

import pytest

from tuner import lora_training

pytestmark = pytest.mark.integration


def test_the_command_line_check_passes_on_the_embedded_model(capsys):
    assert lora_training.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("210 LoRA layers fused; loss ") and "over 420 tensors" in out, out
