"""The memory levers of issue 12: the 8-bit optimizer and activation offload.

How they reach the config, the checks that refuse them where they cannot run, and how the offload finds the
inputs of the checkpointed layers. The copies themselves need a CUDA GPU: that test is skipped without one.
"""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuner.models import EMBEDDED_MODEL
from tuner.offload import ENV, CheckpointOffload, offload_checkpoint_inputs, route_checkpoints
from tuner.spec import OPTIMIZERS, read_config, render_config, spec_for_model, spec_problems
from tuner.xtuner_compat import patched_environment

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path, **changes):
    data = tmp_path / "d.jsonl"
    data.write_text('{"conversation": [{"input": "hi", "output": "hello"}]}\n', encoding="utf-8")
    return spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], precision="fp32", **changes)


@pytest.mark.parametrize("optimizer, optim_class", [("adamw", "AdamW"), ("adamw_8bit", "AdamW8bit"),
                                                    ("paged_adamw_8bit", "PagedAdamW8bit")])
def test_the_config_names_the_optimizer_class_and_reads_back(tmp_path, optimizer, optim_class):
    spec = _spec(tmp_path, optimizer=optimizer, offload_activations=True)
    text = render_config(spec)
    compile(text, "config.py", "exec")
    assert f"\noptim_type = {optim_class}  #" in text
    assert "optimizer=dict(type=optim_type, lr=lr, betas=betas, weight_decay=weight_decay)" in text
    assert ("from bitsandbytes.optim import" in text) == (optimizer != "adamw")
    assert "\noffload_activations = True  #" in text
    assert read_config(text) == spec.replace(template="qwen_chat")


def test_a_default_config_keeps_torch_adamw_and_no_offload(tmp_path):
    text = render_config(_spec(tmp_path))
    assert "\noptim_type = AdamW  #" in text and "bitsandbytes" not in text.split("PART 1")[0]
    assert "\noffload_activations = False  #" in text
    back = read_config(text)
    assert back.optimizer == "adamw" and back.offload_activations is False


def test_a_config_from_before_the_levers_reads_back_with_their_defaults(tmp_path):
    text = render_config(_spec(tmp_path)).replace("optim_type = AdamW  #", "optim_type = AdamW\n#")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("offload_activations"))
    back = read_config(text)
    assert back.optimizer == "adamw" and back.offload_activations is False


def test_mmengine_builds_the_8bit_optimizer_the_config_names(tmp_path):
    import bitsandbytes as bnb
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    path = tmp_path / "config.py"
    path.write_text(render_config(_spec(tmp_path, method="lora", optimizer="paged_adamw_8bit")), encoding="utf-8")
    config = Config.fromfile(str(path))
    wrapper = build_optim_wrapper(torch.nn.Linear(64, 64), config.optim_wrapper)
    assert type(wrapper.optimizer) is bnb.optim.PagedAdamW8bit
    group = wrapper.optimizer.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["weight_decay"]) == (config.lr, config.betas, 0.0)


def test_without_cuda_the_8bit_optimizers_and_offload_are_refused_naming_the_setting(tmp_path):
    for optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        problems = spec_problems(_spec(tmp_path, optimizer=optimizer), cuda_available=False)
        assert len(problems) == 1 and problems[0].startswith(f"optimizer {optimizer!r}")
        assert "CUDA GPU" in problems[0] and "Choose adamw" in problems[0]
    problems = spec_problems(_spec(tmp_path, offload_activations=True), cuda_available=False)
    assert len(problems) == 1 and problems[0].startswith("offload_activations") and "CUDA GPU" in problems[0]
    assert spec_problems(_spec(tmp_path), cuda_available=False) == []


def test_the_levers_are_accepted_with_cuda_and_checked_for_what_they_cannot_do(tmp_path):
    assert spec_problems(_spec(tmp_path, optimizer="paged_adamw_8bit", offload_activations=True),
                         cuda_available=True) == []
    problems = spec_problems(_spec(tmp_path, optimizer="adam8"), cuda_available=True)
    assert problems == [f"optimizer must be one of {', '.join(OPTIMIZERS)}, not 'adam8'."]
    with_deepspeed = spec_problems(_spec(tmp_path, optimizer="adamw_8bit", deepspeed="deepspeed_zero2"), True)
    assert any(p.startswith("optimizer 'adamw_8bit' is not combined with DeepSpeed") for p in with_deepspeed)


def test_the_estimate_counts_the_levers():
    from tuner.estimate import ModelShape, estimate_training

    shape = ModelShape(parameters=7e9, layers=32, hidden=4096, vocab=32000)
    base = spec_for_model("x", method="qlora").replace(optimizer="adamw")  # auto may resolve to 8-bit
    memory = {name: estimate_training(spec, shape, 100_000, on_gpu=True).memory_gib for name, spec in {
        "adamw": base, "8bit": base.replace(optimizer="adamw_8bit"),
        "offload": base.replace(offload_activations=True)}.items()}
    assert memory["8bit"] < memory["adamw"] - 0.5 and memory["offload"] < memory["adamw"] - 0.3


def test_the_job_runner_tells_the_training_process_whether_to_offload():
    from tuner import supervisor
    from tuner.spec import TrainSpec

    env, _ = supervisor._lever_environment(TrainSpec(offload_activations=True))
    assert env[ENV] == "1"
    env, _ = supervisor._lever_environment(TrainSpec())
    assert env[ENV] == "0"


def test_the_cli_sets_both_levers(tmp_path):
    from tuner.cli import _spec_from_args, build_parser

    args = build_parser().parse_args(["config", "--optimizer", "paged_adamw_8bit", "--offload-activations",
                                      "--out", str(tmp_path / "c.py")])
    spec = _spec_from_args(args)
    assert spec.optimizer == "paged_adamw_8bit" and spec.offload_activations is True
    args = build_parser().parse_args(["config", "--out", str(tmp_path / "c.py")])
    assert _spec_from_args(args).offload_activations is False


# ------------------------------------------------------------------------------------------ offload
def _tiny_llama(seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config)
    model.gradient_checkpointing_enable()  # reentrant: transformers' default, and XTuner's
    model.enable_input_require_grads()
    model.train()
    return model


def _loss_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


class _Recording(CheckpointOffload):
    """Passes every tensor through, as the offload would hand it back: a detached copy."""

    def pack(self, tensor):
        self.saved.append(tensor.shape)
        return tensor.detach().clone()

    def unpack(self, tensor):
        return tensor


def test_the_offload_sees_each_checkpointed_layers_input_and_the_gradients_stay_the_same(monkeypatch):
    model = _tiny_llama()
    ids = torch.randint(0, 64, (1, 16))
    expected = _loss_and_grads(model, ids)
    monkeypatch.setattr("tuner.offload.CheckpointOffload", _Recording)
    with offload_checkpoint_inputs(model) as offload:
        loss = model(input_ids=ids, labels=ids).loss
    hidden_states = [shape for shape in offload.saved if shape == (1, 16, 32)]
    assert len(hidden_states) == 3  # one per decoder layer
    model.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, expected[name]), name


def test_checkpointing_turned_off_and_on_again_is_routed_again_before_the_next_forward():
    model = _tiny_llama()
    assert route_checkpoints(model) == 1  # LlamaModel checkpoints its layers
    assert model.model._gradient_checkpointing_func.tuner_offload
    model.gradient_checkpointing_disable()  # what XTuner's evaluation hook does around its samples
    model.gradient_checkpointing_enable()
    assert not getattr(model.model._gradient_checkpointing_func, "tuner_offload", False)
    with offload_checkpoint_inputs(model):
        assert model.model._gradient_checkpointing_func.tuner_offload


def test_outside_an_offloaded_forward_and_on_a_cpu_nothing_moves():
    model = _tiny_llama()
    ids = torch.randint(0, 64, (1, 16))
    expected = _loss_and_grads(model, ids)
    route_checkpoints(model)
    grads = _loss_and_grads(model, ids)  # routed, but no offload active
    with offload_checkpoint_inputs(model) as offload:
        loss = model(input_ids=ids, labels=ids).loss
    assert offload.saved == []  # CPU tensors stay where they are
    model.zero_grad(set_to_none=True)
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.equal(grads[name], expected[name]) and torch.equal(p.grad, expected[name])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copies to pinned host memory need a CUDA GPU")
def test_on_a_gpu_the_offloaded_step_gives_the_same_gradients_with_less_memory_held():
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                                      num_attention_heads=8, max_position_embeddings=2048)
    model = transformers.LlamaForCausalLM(config).cuda()
    model.gradient_checkpointing_enable()
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, 256, (1, 1024), device="cuda")
    expected = _loss_and_grads(model, ids)
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with offload_checkpoint_inputs(model) as offload:
        loss = model(input_ids=ids, labels=ids).loss
    torch.cuda.synchronize()
    held_offloaded = torch.cuda.memory_allocated() - before
    assert len(offload.saved) == 6 and offload.moved_bytes() == 6 * 1024 * 512 * 4
    loss.backward()
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, expected[name], atol=1e-6), name
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loss = model(input_ids=ids, labels=ids).loss
    held = torch.cuda.memory_allocated() - before
    assert held - held_offloaded >= 4 * 1024 * 512 * 4


def test_the_training_process_wraps_xtuners_loss_only_when_asked(monkeypatch):
    env = patched_environment()
    env[ENV] = "1"
    code = "import xtuner.model.sft as sft; print(sft.SupervisedFinetune.compute_loss.__module__)"
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "tuner.offload"
    from tuner.offload import install_training_hooks

    hooks = list(sys.meta_path)
    monkeypatch.delenv(ENV, raising=False)
    install_training_hooks()
    assert sys.meta_path == hooks


def test_auto_optimizer_is_paged_8bit_only_where_it_can_run():
    from tuner.spec import resolve_optimizer

    spec = spec_for_model("x", method="qlora")
    assert spec.optimizer == "auto"
    assert resolve_optimizer(spec, cuda_available=False) == "adamw"
    assert resolve_optimizer(spec.replace(deepspeed="deepspeed_zero2"), cuda_available=True) == "adamw"
    assert resolve_optimizer(spec.replace(gpus=2), cuda_available=True) == "adamw"
    assert resolve_optimizer(spec, cuda_available=True) == "paged_adamw_8bit"  # bitsandbytes is a requirement
    assert resolve_optimizer(spec.replace(optimizer="adamw"), cuda_available=True) == "adamw"
    assert not [p for p in spec_problems(spec, cuda_available=False) if "optimizer" in p]
    import re

    line = re.search(r"^optim_type = (\w+)", render_config(spec), re.M)
    assert line and line.group(1) == "AdamW"  # this machine has no GPU: torch's AdamW, no bitsandbytes import
