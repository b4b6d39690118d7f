"""Exactly the folder that will be pushed: an adapter, a merged model, or the chat app.

A staged folder holds no token and no local path of this machine: the XTuner config is rendered
again with the public base model name and a relative data path, and ``check_no_secrets`` scans
every file before a push.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from deploy.card import loss_curve_png, model_card, public_base_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tuner_adapter.json")
SPACE_TEMPLATE = Path(__file__).parent / "space_template"
# What the chat-only app needs of tuner/ (it never trains, so no XTuner in the Space).
# spec.py (and the kernels.py and lora_training.py it imports): models.remote_code_allowed reads the presets from it.
TUNER_FILES_FOR_CHAT = ("__init__.py", "chat.py", "decode.py", "decode_kernels.py", "batching.py", "slot_batching.py",
                        "model_cache.py", "models.py", "convert.py", "progress.py", "paths.py", "spec.py", "kernels.py",
                        "lora_training.py")
GRADIO_VERSION = "6.17.3"
# The free way to share a tuned model: ZeroGPU (Gradio SDK, Python 3.10.13 or 3.12.12, torch 2.8 to 2.11).
ZEROGPU_HARDWARE = "zero-a10g"
SPACE_PYTHON = "3.12"


class StageError(Exception):
    pass


def _data_summary(job) -> dict:
    from tuner.data import read_jsonl_records

    records = [r for path in job.spec().data_files for r in read_jsonl_records(Path(path))]
    return {"records": len(records), "turns": sum(len(r.turns) for r in records)}


def _fresh(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    return out_dir


def _public_config(job, out_dir: Path) -> None:
    from tuner.spec import render_config

    spec = job.spec()
    public = spec.replace(data_files=["train.jsonl"])
    (out_dir / "xtuner_config.py").write_text(
        render_config(public, "xtuner_config.py", model_path=public_base_model(spec.model)), encoding="utf-8")


def _card_and_curve(job, out_dir: Path, repo_id: str, kind: str, license: str) -> None:
    losses = job.progress().losses()
    image = loss_curve_png(losses, out_dir / "loss.png")
    card = model_card(job.spec(), repo_id, kind, _data_summary(job), losses, license, image is not None)
    (out_dir / "README.md").write_text(card, encoding="utf-8")


def stage_adapter(job, out_dir: Path, repo_id: str, license: str = "apache-2.0") -> Path:
    """The adapter with its model card, loss curve and a public copy of the XTuner config."""
    adapter = job.adapter_dir
    if not (adapter / "adapter_config.json").exists():
        raise StageError(f"Job {job.id} has no converted adapter yet: run `python -m tuner convert {job.id}`.")
    out_dir = _fresh(out_dir)
    for name in ADAPTER_FILES:
        if (adapter / name).exists():
            shutil.copyfile(adapter / name, out_dir / name)
    _rewrite_adapter_base(out_dir / "adapter_config.json", public_base_model(job.spec().model))
    _public_config(job, out_dir)
    _card_and_curve(job, out_dir, repo_id, "adapter", license)
    return out_dir


def _rewrite_adapter_base(config_path: Path, base: str) -> None:
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base  # not this machine's cache folder
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def stage_merged(job, out_dir: Path, repo_id: str, license: str = "apache-2.0") -> Path:
    merged = job.merged_dir
    if not (merged / "config.json").exists():
        raise StageError(f"Job {job.id} has no merged model yet: run `python -m tuner merge --job {job.id}`.")
    out_dir = _fresh(out_dir)
    for path in merged.iterdir():
        if path.is_file():
            shutil.copyfile(path, out_dir / path.name)
    _public_config(job, out_dir)
    _card_and_curve(job, out_dir, repo_id, "merged", license)
    return out_dir


def space_front_matter(hub: str, title: str, model_repo: str, hardware: str = ZEROGPU_HARDWARE) -> str:
    if hub == "hf":
        return f"""---
title: {title}
emoji: 💬
colorFrom: blue
colorTo: indigo
sdk: gradio
sdk_version: {GRADIO_VERSION}
app_file: app.py
python_version: "{SPACE_PYTHON}"
suggested_hardware: {hardware}
pinned: false
models:
- {model_repo}
---
"""
    if hub == "modelscope":
        return f"""---
domain:
- nlp
tags:
- xtuner
- chat
datasets: []
models:
- {model_repo}
deployspec:
  entry_file: app.py
license: apache-2.0
---
"""
    return ""  # OpenXLab apps take their settings from the web form; app.py and requirements.txt suffice


def stage_app(out_dir: Path, model_repo: str = "", hub: str = "hf", title: str = "My assistant",
              model_kind: str = "auto", hardware: str = ZEROGPU_HARDWARE) -> Path:
    """The chat-only app bundle: app.py, requirements.txt, packages.txt, README.md, tuner/ (chat only).

    With no ``model_repo`` the app chats with the embedded default model. On hf it suggests ZeroGPU
    (``hardware``; "cpu-basic" and the others work too: the app runs on CPU hardware as well).
    """
    out_dir = _fresh(out_dir)
    for name in ("app.py", "requirements.txt", "packages.txt"):
        shutil.copyfile(SPACE_TEMPLATE / name, out_dir / name)
    settings = f'MODEL_REPO = "{model_repo}"\nMODEL_KIND = "{model_kind}"\nHUB = "{hub}"\nTITLE = "{title}"\n'
    (out_dir / "space_settings.py").write_text(settings, encoding="utf-8")
    extra = {"modelscope": "modelscope==1.40.2\n", "openxlab": "openxlab==0.0.11\noss2==2.19.1\n"}.get(hub, "")
    with (out_dir / "requirements.txt").open("a", encoding="utf-8") as handle:
        handle.write(extra)  # the hub's own client downloads the model at start
    tuner_src = Path(__file__).resolve().parent.parent / "tuner"
    (out_dir / "tuner").mkdir()
    for name in TUNER_FILES_FOR_CHAT:
        shutil.copyfile(tuner_src / name, out_dir / "tuner" / name)
    from xtuner.utils import PROMPT_TEMPLATE  # the Space has no XTuner: take its template table along

    (out_dir / "tuner" / "prompt_templates.json").write_text(
        json.dumps({k: dict(v) for k, v in PROMPT_TEMPLATE.items()}, indent=1, ensure_ascii=False), encoding="utf-8")
    front = space_front_matter(hub, title, model_repo or "HuggingFaceTB/SmolLM2-135M-Instruct", hardware)
    (out_dir / "README.md").write_text(front + f"\n# {title}\n\nA chat demo of `{model_repo or 'the embedded default'}`"
                                       ", fine-tuned with XTuner. Visitors can chat; nothing can be trained or "
                                       "published from here.\n", encoding="utf-8")
    return out_dir


def check_no_secrets(folder: Path, secrets: list[str]) -> None:
    """Refuse to push a folder in which any token appears (in any file, text or binary)."""
    needles = [s.encode() for s in secrets if s and len(s) >= 8]
    for path in Path(folder).rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                raise StageError(f"{path.relative_to(folder)} contains a token: not pushed.")


# A Hugging Face user access token: "hf_" and 34 letters or digits today; 30 or more is matched.
HF_TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")


def check_no_token_patterns(folder: Path) -> None:
    """Refuse a folder in which anything looks like a Hugging Face token, whoever's it is."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and HF_TOKEN_PATTERN.search(path.read_bytes()):
            raise StageError(f"{path.relative_to(folder)} contains what looks like a Hugging Face token "
                             "(hf_...): not pushed. Remove it from that file.")
