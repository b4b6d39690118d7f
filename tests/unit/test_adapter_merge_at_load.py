"""An adapter is merged into its base at load (bf16/fp32), and replies as the unmerged PEFT model does."""

import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from tuner.chat import GenerationSettings, load_chat_model, reply  # noqa: E402
from tuner.models import EMBEDDED_MODEL, resolve_model  # noqa: E402

GREEDY = GenerationSettings(max_new_tokens=16, temperature=0.0)
MESSAGE = "Tell me a short story about a cat."


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A LoRA on the embedded model whose update is not zero (lora_B random), saved as PEFT saves it."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_model(EMBEDDED_MODEL), torch_dtype=torch.float32)
    lora = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                           task_type="CAUSAL_LM")
    model = peft.get_peft_model(base, lora)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.3)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    return folder


def test_an_adapter_is_merged_at_load_and_replies_as_the_unmerged_one(adapter, monkeypatch):
    monkeypatch.delenv("TUNER_MERGE_ADAPTER", raising=False)
    merged = load_chat_model("adapter", EMBEDDED_MODEL, adapter)
    monkeypatch.setenv("TUNER_MERGE_ADAPTER", "0")
    unmerged = load_chat_model("adapter", EMBEDDED_MODEL, adapter)

    assert not isinstance(merged.model, peft.PeftModel)
    assert not any("lora_" in name for name, _ in merged.model.named_parameters())
    assert "(merged at load)" in merged.description
    assert isinstance(unmerged.model, peft.PeftModel)
    assert "merged at load" not in unmerged.description

    answer = reply(merged, MESSAGE, settings=GREEDY)
    assert answer and answer == reply(unmerged, MESSAGE, settings=GREEDY)
    with unmerged.model.disable_adapter():  # the adapter changes the reply: the equality above says something
        assert reply(unmerged, MESSAGE, settings=GREEDY) != answer
