"""What would be pushed, built from a real finished job (a short `xtuner train` on the embedded model)."""

import ast
import os
import json
import subprocess
import sys
from pathlib import Path

import gradio
import pytest

from deploy.publish import publish, stage
from deploy.stage import StageError, check_no_secrets
from deploy.hubs.base import PublishError
from tuner.data import self_cognition_records, write_jsonl
from tuner.jobs import JobState, create_job, start_job, wait_job
from tuner.models import EMBEDDED_MODEL
from tuner.spec import read_config, spec_for_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def finished_job(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-home")
    patcher = pytest.MonkeyPatch()
    patcher.setenv("TUNER_HOME", str(home))
    data = write_jsonl(self_cognition_records("Carol", count=24), home / "carol.jsonl")
    spec = spec_for_model(EMBEDDED_MODEL, data_files=[str(data)], max_epochs=1, evaluation_freq=1000,
                          evaluation_inputs=["Who are you?"])
    job = create_job(spec, "carol")
    start_job(job, merge_after=True)
    status = wait_job(job, timeout=900)
    assert status.state == JobState.SUCCEEDED, f"{status.reason}\n{job.log_tail(40)}"
    yield job
    patcher.undo()


def _front_matter(readme: Path) -> str:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return text.split("---\n")[1]


def test_adapter_stage_has_card_metadata_loss_curve_and_no_local_paths(finished_job, tmp_path):
    folder = stage("adapter", tmp_path / "a", "carol/carol-assistant", finished_job)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors", "loss.png",
                     "tuner_adapter.json", "xtuner_config.py"]
    meta = _front_matter(folder / "README.md")
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in meta and "library_name: peft" in meta
    assert "license: apache-2.0" in meta and "- xtuner" in meta
    assert (folder / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert read_config((folder / "xtuner_config.py").read_text()).data_files == ["train.jsonl"]
    for path in folder.iterdir():
        data = path.read_bytes()
        assert str(finished_job.dir).encode() not in data and b"/.cache/tuner" not in data, path.name
    assert "PeftModel.from_pretrained" in (folder / "README.md").read_text()


def test_merged_model_stage_carries_weights_tokenizer_and_a_transformers_card(finished_job, tmp_path):
    folder = stage("model", tmp_path / "m", "carol/carol-merged", finished_job)
    assert (folder / "config.json").exists() and list(folder.glob("*.safetensors"))
    assert (folder / "tokenizer.json").exists()
    assert "library_name: transformers" in _front_matter(folder / "README.md")


def test_a_folder_holding_a_token_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("token hf_abcdefghijklmnop here")
    with pytest.raises(StageError, match="contains a token"):
        check_no_secrets(tmp_path, ["hf_abcdefghijklmnop"])
    check_no_secrets(tmp_path, ["hf_somethingelse123"])


def test_publishing_without_any_token_says_so(finished_job, monkeypatch):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PublishError) as error:
        publish("adapter", "hf", "carol/x", job=finished_job)
    assert error.value.kind == "bad_token"


def test_dry_run_app_bundle_with_no_job_is_a_valid_space(tmp_path):
    out = tmp_path / "space"
    run = subprocess.run([sys.executable, "-m", "deploy", "app", "--to", "hf", "--dry-run", str(out)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    meta = _front_matter(out / "README.md")
    assert "sdk: gradio" in meta and f"sdk_version: {gradio.__version__}" in meta
    assert "app_file: app.py" in meta and 'python_version: "3.12"' in meta and "suggested_hardware:" in meta
    ast.parse((out / "app.py").read_text())
    from tuner.bootstrap import pinned

    pins = pinned(ROOT / "requirements.txt")
    for name, version in pinned(out / "requirements.txt").items():
        assert pins.get(name) == version, f"{name} in the Space differs from the tested set"
    assert not (out / "tuner" / "jobs.py").exists()  # chat only: no training code in the Space


def test_one_command_publishes_the_adapter_with_its_card_to_the_hub(finished_job, hf_server, tmp_path):
    from hub_accounts import ALICE_TOKEN

    env = {**os.environ, "HF_TOKEN": ALICE_TOKEN}
    run = subprocess.run([sys.executable, "-m", "deploy", "adapter", "--to", "hf", "--job", finished_job.id,
                          "--repo", "alice/carol-assistant", "--private", "--endpoint", hf_server.url],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().endswith(f"{hf_server.url}/alice/carol-assistant")
    repo = hf_server.repo("alice/carol-assistant")
    staged = stage("adapter", tmp_path / "expected", "alice/carol-assistant", finished_job)
    expected = {p.name: p.read_bytes() for p in staged.iterdir()}
    assert repo.private and {path: f.data for path, f in repo.files.items()} == {**expected,
                                                                                  **_gitattributes(repo)}
    assert repo.head.message == "Upload adapter from tuner"
    assert all(ALICE_TOKEN.encode() not in f.data for f in repo.files.values())
    assert ALICE_TOKEN not in run.stdout + run.stderr
    assert not any(ALICE_TOKEN in p.read_text(errors="ignore") for p in finished_job.dir.rglob("*")
                   if p.is_file() and p.stat().st_size < 5_000_000)


def _gitattributes(repo):
    return {path: f.data for path, f in repo.files.items() if path == ".gitattributes"}
