"""tuner/lora_training.py: fused LoRA layers compute what PEFT's do (outputs and gradients, over real bitsandbytes
4-bit bases and over plain ones, with dropout), follow the optimizer's updates, leave alone what they do not
handle, and reach the model XTuner builds through the spec."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from tuner import lora_training
from tuner.lora_training import cast_frozen, fuse_lora, resolve, resolve_frozen, unfuse_lora
from tuner.spec import TrainSpec, spec_problems

bnb = pytest.importorskip("bitsandbytes")

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tiny_llama(four_bit: bool, dtype=torch.float32, dropout=0.0, seed=0):
    """A 2-layer Llama with PEFT LoRA on every linear layer; its linears in bitsandbytes NF4 when ``four_bit``
    (double-quantized, bf16 compute: what QLoRA loads). B starts random so A gets gradients too."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config).to(dtype)
    if four_bit:
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, linear in list(parent.named_children()):
                    if isinstance(linear, torch.nn.Linear):
                        quantized = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False,
                                                      compute_dtype=torch.bfloat16, quant_type="nf4")
                        quantized.weight = bnb.nn.Params4bit(linear.weight.data.to(torch.bfloat16),
                                                             requires_grad=False, quant_type="nf4",
                                                             compress_statistics=True)
                        setattr(parent, name, quantized.to("cpu"))  # quantized on the move
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=TARGETS))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)
    return model


def loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def relative(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("four_bit", [False, True])
def test_fused_layers_give_peft_loss_and_gradients(four_bit):
    model = tiny_llama(four_bit)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    loss_peft, grads_peft = loss_and_grads(model, ids)
    assert fuse_lora(model) == 14  # 7 per layer
    first_layer = model.base_model.model.model.layers[0]
    group, _ = first_layer.self_attn.q_proj._tuner_lora_group
    assert [m for m in group.members] == [first_layer.self_attn.q_proj, first_layer.self_attn.k_proj,
                                          first_layer.self_attn.v_proj]
    loss_fused, grads_fused = loss_and_grads(model, ids)
    # Plain float32 bases: the same arithmetic in another order. 4-bit: the fused layer adds LoRA's part in bf16,
    # where PEFT adds it in float32 to the bf16 base output: bf16 rounding (2^-8 = 0.4 %).
    tolerance = 2e-2 if four_bit else 1e-5
    assert loss_fused.item() == pytest.approx(loss_peft.item(), rel=tolerance / 10)
    assert set(grads_fused) == set(grads_peft) and len(grads_peft) == 28
    worst = max(relative(grads_fused[n], g) for n, g in grads_peft.items())
    assert worst < tolerance, worst
    unfuse_lora(model)
    assert "forward" not in vars(first_layer.self_attn.q_proj)
    loss_again, _ = loss_and_grads(model, ids)
    assert loss_again.item() == loss_peft.item()


def test_dropout_draws_one_mask_per_member_as_peft_does():
    """float64, so a difference is a bug and not rounding: the fused group against the same computation written
    with autograd, drawing the members' masks in the same order from the same seed."""
    model = tiny_llama(False, torch.float64, dropout=0.3)
    model.train()
    fuse_lora(model)
    attention = model.base_model.model.model.layers[0].self_attn
    names = ("q_proj", "k_proj", "v_proj")
    members = [getattr(attention, name) for name in names]
    x = torch.randn(3, 5, 64, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(7)
    fused = [member(x) for member in members]
    sum(((i + 1) * y).sin().sum() for i, y in enumerate(fused)).backward()
    fused_grads = [x.grad.clone()] + [p.grad.clone() for m in members
                                      for p in (m.lora_A["default"].weight, m.lora_B["default"].weight)]

    x.grad = None
    for member in members:
        member.lora_A["default"].weight.grad = member.lora_B["default"].weight.grad = None
    torch.manual_seed(7)
    reference = []
    flat = x.reshape(-1, 64)
    for member in members:
        dropped, _ = torch.native_dropout(flat, 0.3, True)
        a, b = member.lora_A["default"].weight, member.lora_B["default"].weight
        y = flat @ member.base_layer.weight.t() + member.scaling["default"] * (dropped @ a.t()) @ b.t()
        reference.append(y.view(3, 5, -1))
    sum(((i + 1) * y).sin().sum() for i, y in enumerate(reference)).backward()
    reference_grads = [x.grad] + [p.grad for m in members
                                  for p in (m.lora_A["default"].weight, m.lora_B["default"].weight)]

    for got, want in zip(fused, reference):
        assert torch.allclose(got, want, atol=1e-12)
    for got, want in zip(fused_grads, reference_grads):
        assert torch.allclose(got, want, atol=1e-10)
    assert not torch.allclose(fused[0], members[0].base_layer(x))  # the dropout path did contribute


def test_each_pass_reads_the_lora_weights_as_they_are_now():
    """The bf16 copies of the LoRA weights are made once per pass through the model. An update written in place
    where autograd does not see it (as bitsandbytes' 8-bit optimizers write) shows in the next pass: its output
    is PEFT's for the new weights, not the old output a copy kept across passes would give."""
    model = tiny_llama(True)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(2))
    fuse_lora(model)
    with torch.no_grad():
        before = model(input_ids=ids).logits
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.data.mul_(-3.0)  # .data: no version bump
        after = model(input_ids=ids).logits
        unfuse_lora(model)
        want = model(input_ids=ids).logits
    assert relative(after, want) < 2e-2
    assert relative(after, before) > 10 * relative(after, want)


def test_layers_fused_lora_does_not_compute_keep_peft():
    model = tiny_llama(False)
    model.base_model.model.model.layers[0].self_attn.q_proj.merged_adapters.append("default")  # merged
    with torch.no_grad():
        peft_dora = get_peft_model(LlamaForCausalLM(model.config).float(),
                                   LoraConfig(r=4, use_dora=True, target_modules=TARGETS))
    assert fuse_lora(peft_dora) == 0  # DoRA is another computation
    count = fuse_lora(model)
    attention = model.base_model.model.model.layers[0].self_attn
    assert count == 13 and "forward" not in vars(attention.q_proj)  # the merged layer keeps PEFT's forward
    assert attention.k_proj._tuner_lora_group[0].members == [attention.k_proj]  # its siblings fuse alone


def test_a_disabled_adapter_falls_back_to_the_base_layer():
    model = tiny_llama(False)
    ids = torch.randint(0, 128, (1, 8))
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=ids).logits
    fuse_lora(model)
    with model.disable_adapter(), torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base)


def test_choices_resolve_per_machine():
    assert resolve("auto", cuda_available=True) == "fused"
    assert resolve("auto", cuda_available=False) == "peft"  # measured no faster on CPU
    assert resolve("auto", "deepspeed_zero3", cuda_available=True) == "peft"  # partitioned weights
    assert resolve("fused", cuda_available=False) == "fused"
    with pytest.raises(ValueError, match="lora_kernel must be one of"):
        resolve("fast")
    assert resolve_frozen("auto", "bf16") == "bf16"
    assert resolve_frozen("auto", "fp16") == ""  # fp16 keeps peft's float32 norms
    assert resolve_frozen("compute", "fp16") == "fp16"
    assert resolve_frozen("compute", "fp32") == "" and resolve_frozen("fp32", "bf16") == ""
    problems = spec_problems(TrainSpec(lora_kernel="fast", frozen_dtype="half", data_files=[]), cuda_available=False)
    assert any(p.startswith("lora_kernel must be one of") for p in problems)
    assert any(p.startswith("frozen_dtype must be one of") for p in problems)


def test_cast_frozen_moves_only_frozen_float32_weights():
    model = tiny_llama(True)
    for param in model.parameters():  # what peft's prepare_model_for_kbit_training leaves
        if param.dtype == torch.float32:
            param.data = param.data.float()
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    moved = cast_frozen(model, torch.bfloat16)
    assert moved == sum(p.numel() for p in model.parameters() if not p.requires_grad and p.dtype == torch.bfloat16
                        and type(p).__name__ != "Params4bit")
    assert moved > 0 and model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert {n: p.dtype for n, p in model.named_parameters() if p.requires_grad} == trainable  # LoRA stays fp32
    assert all(p.dtype == torch.uint8 for p in model.parameters() if type(p).__name__ == "Params4bit")


def test_the_job_runner_passes_the_levers_to_the_training_process(monkeypatch):
    from tuner import supervisor

    monkeypatch.setattr("tuner.spec._cuda_available", lambda: True)
    monkeypatch.setattr("torch.cuda.is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    env, _ = supervisor._lever_environment(TrainSpec(method="qlora", precision="auto"))
    assert env[lora_training.ENV] == "fused" and env[lora_training.FROZEN_ENV] == "bf16"
    env, _ = supervisor._lever_environment(TrainSpec(lora_kernel="peft", frozen_dtype="fp32", precision="bf16"))
    assert env[lora_training.ENV] == "peft" and env[lora_training.FROZEN_ENV] == ""
