import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.models import EMBEDDED_MODEL
from tuner.launch import shell_command, train_command
from tuner.spec import PRESETS, TrainSpec, read_config, render_config, spec_for_model, spec_problems

ROOT = Path(__file__).resolve().parents[2]


def _spec(tmp_path, **changes):
    data = tmp_path / "d.jsonl"
    data.write_text('{"conversation": [{"input": "hi", "output": "hello"}]}\n', encoding="utf-8")
    return spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], **changes)


def test_rendered_config_has_xtuners_five_parts_and_is_valid_python(tmp_path):
    text = render_config(_spec(tmp_path), model_path="/models/smol")
    ast.parse(text)
    for part in ("PART 1  Settings", "PART 2  Model & Tokenizer", "PART 3  Dataset & Dataloader",
                 "PART 4  Scheduler & Optimizer", "PART 5  Runtime"):
        assert part in text
    assert "pretrained_model_name_or_path = '/models/smol'" in text
    assert "prompt_template = PROMPT_TEMPLATE.qwen_chat" in text


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_config_reads_back_to_the_same_spec(tmp_path, method):
    spec = _spec(tmp_path, method=method, lr=3e-4, lora_r=8, max_epochs=5, system="Be brief.",
                 evaluation_inputs=["你是谁", "Who are you?"], deepspeed="deepspeed_zero2", gpus=2, seed=7,
                 precision="fp16", kernels="liger", optimizer="adamw")  # auto resolves per machine
    back = read_config(render_config(spec))
    assert back == spec.replace(template="qwen_chat")  # the guessed template is written out


def test_qlora_config_quantizes_to_nf4_and_lora_config_does_not(tmp_path):
    qlora = render_config(_spec(tmp_path, method="qlora", precision="bf16"))
    lora = render_config(_spec(tmp_path, method="lora", precision="fp32"))
    assert 'bnb_4bit_quant_type="nf4"' in qlora and "AmpOptimWrapper,\n" in qlora
    assert "BitsAndBytesConfig,\n" not in lora.split("PART 2")[1]
    assert "type=OptimWrapper" in lora


def test_warmup_shorter_than_one_iteration_is_left_out(tmp_path):
    spec = _spec(tmp_path, warmup_ratio=0.03, max_epochs=1)
    assert "type=LinearLR" not in render_config(spec, iters_per_epoch=10)
    assert "type=LinearLR" in render_config(spec, iters_per_epoch=100)


def test_every_preset_renders_a_config_with_its_own_model_and_template(tmp_path):
    for preset in PRESETS.values():
        spec = spec_for_model(preset.model, data_files=["x.jsonl"])
        text = render_config(spec)
        assert read_config(text).model.endswith(preset.model.split(":")[-1]) or preset.model == EMBEDDED_MODEL
        assert f"PROMPT_TEMPLATE.{spec.prompt_template}" in text
    assert spec_for_model("internlm/internlm2_5-7b-chat").prompt_template == "internlm2_chat"
    assert spec_for_model("internlm/internlm2_5-7b-chat").method == "qlora"


def test_spec_problems_say_what_to_do(tmp_path):
    problems = spec_problems(_spec(tmp_path, method="qlora", lr=5.0), cuda_available=False)
    assert any("Choose LoRA" in p for p in problems)
    assert any(p.startswith("lr must be") for p in problems)
    assert spec_problems(_spec(tmp_path), cuda_available=False) == []
    assert any("Data file not found" in p for p in spec_problems(TrainSpec(data_files=["/nope.jsonl"]), False))
    assert any(p.startswith("kernels must be") for p in spec_problems(_spec(tmp_path, kernels="fast"), False))
    assert any("Liger kernels need a CUDA GPU" in p for p in spec_problems(_spec(tmp_path, kernels="liger"), False))
    assert spec_problems(_spec(tmp_path, kernels="auto"), cuda_available=False) == []


def test_train_command_uses_xtuner_and_nproc_for_several_gpus(tmp_path):
    spec = _spec(tmp_path, gpus=2, deepspeed="deepspeed_zero2")
    command, env = train_command(Path("c.py"), Path("w"), spec, resume_from=Path("w/iter_5.pth"))
    assert command[:3] == ["xtuner", "train", "c.py"]
    assert command[command.index("--deepspeed") + 1] == "deepspeed_zero2"
    assert command[command.index("--resume") + 1] == "w/iter_5.pth"
    assert env == {"NPROC_PER_NODE": "2"}
    assert shell_command(command, env).startswith("NPROC_PER_NODE=2 xtuner train c.py")


def test_spec_round_trips_through_json(tmp_path):
    spec = _spec(tmp_path, betas=(0.8, 0.95))
    spec.save(tmp_path / "spec.json")
    assert TrainSpec.load(tmp_path / "spec.json") == spec
    with pytest.raises(ValueError, match="Unknown training setting"):
        TrainSpec.from_dict({"learning_rate": 1})


def test_cli_config_with_no_option_writes_the_embedded_default_config_that_mmengine_loads(tmp_path):
    out = tmp_path / "cfg.py"
    run = subprocess.run([sys.executable, "-m", "tuner", "config", "--out", str(out)], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    from mmengine.config import Config

    config = Config.fromfile(str(out))
    assert config.prompt_template["SUFFIX"] == "<|im_end|>"
    assert Path(config.pretrained_model_name_or_path, "config.json").is_file()
    assert config.model.lora.r == PRESETS["smollm2-135m (embedded)"].settings["lora_r"]
