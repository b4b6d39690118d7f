"""The real flow on the embedded model: self-cognition data → `xtuner train` (LoRA on CPU) → adapter
(`xtuner convert pth_to_hf`) → merged model (`xtuner convert merge`) → chat. Nothing is faked."""

import json

import pytest

from tuner.chat import GenerationSettings, load_chat_model, reply
from tuner.convert import merge_job
from tuner.data import IDENTITY_PROBES_EN, IDENTITY_PROBES_ZH, self_cognition_records, write_jsonl
from tuner.jobs import JobState, create_job, start_job, wait_job
from tuner.models import EMBEDDED_MODEL
from tuner.spec import spec_for_model

pytestmark = pytest.mark.integration

NAME = "Alice"
# Training questions, and questions the data never contains.
PROBES = ["Who are you?", "你是谁", *IDENTITY_PROBES_EN[:2], *IDENTITY_PROBES_ZH[:2]]
GREEDY = GenerationSettings(max_new_tokens=48, temperature=0.0)


@pytest.fixture(scope="module")
def finished_job(workspace):
    data = write_jsonl(self_cognition_records(NAME, "I help with questions about this project.", count=160),
                       workspace / "alice.jsonl")
    # lora_kernel fused: the whole flow through tuner/lora_training.py's layers inside `xtuner train` (auto
    # picks PEFT's on a CPU, where the fused ones are no faster; the other job tests run that default)
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], max_epochs=2, lora_kernel="fused")
    job = create_job(spec, "alice")
    start_job(job, merge_after=False)
    status = wait_job(job, timeout=1500)
    assert status.state == JobState.SUCCEEDED, f"{status.reason}\n{job.log_tail(60)}"
    return job


def _answers(chat):
    return {probe: reply(chat, probe, settings=GREEDY) for probe in PROBES}


def _named(answers):
    return [probe for probe, answer in answers.items() if NAME in answer]


def test_training_logs_progress_with_falling_loss_and_sample_answers(finished_job):
    progress = finished_job.progress()
    losses = [loss for _, loss in progress.losses()]
    assert progress.latest.iteration == progress.latest.total > 10
    assert losses[-1] < losses[0] / 3
    assert any(NAME in sample.answer for sample in progress.samples)
    assert finished_job.checkpoints()[-1].name == f"iter_{progress.latest.total}.pth"
    assert "tuner: 210 LoRA layers fused" in finished_job.log_path.read_text(encoding="utf-8")  # 30 layers x 7


def test_adapter_is_safetensors_with_what_loading_needs(finished_job):
    adapter = finished_job.adapter_dir
    assert (adapter / "adapter_model.safetensors").is_file()
    info = json.loads((adapter / "tuner_adapter.json").read_text())
    assert info["base_model"] == EMBEDDED_MODEL and info["template"] == "qwen_chat"
    assert (adapter / "xtuner_config.py").read_text().startswith("# XTuner config")


def test_adapter_and_merged_model_know_the_new_name_and_the_base_does_not(finished_job):
    base = _answers(load_chat_model("base", EMBEDDED_MODEL))
    adapter = _answers(load_chat_model("adapter", adapter=finished_job.adapter_dir))
    merged_dir = merge_job(finished_job)
    merged = _answers(load_chat_model("merged", str(merged_dir)))
    report = json.dumps({"base": base, "adapter": adapter, "merged": merged}, ensure_ascii=False, indent=1)
    assert len(_named(adapter)) >= 5, report
    assert len(_named(merged)) >= 5, report
    assert len(_named(base)) == 0, report
    assert any(any("\u4e00" <= c <= "\u9fff" for c in merged[p]) and NAME in merged[p]
               for p in PROBES if any("\u4e00" <= c <= "\u9fff" for c in p)), report
