"""XTuner's own converters: ``xtuner convert pth_to_hf`` (checkpoint → PEFT adapter in safetensors)
and ``xtuner convert merge`` (base + adapter → one model).

An adapter folder also gets ``tuner_adapter.json`` (base model as the user named it, prompt template,
system prompt) and the XTuner config, so it can be loaded, chatted with and published later without
the job folder.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tuner.models import resolve_model
from tuner.progress import read_progress

ADAPTER_INFO = "tuner_adapter.json"
MODEL_INFO = "tuner_model.json"


class ConversionError(Exception):
    """pth_to_hf or merge did not produce its output."""


def _run_xtuner(arguments: list[str], log_path: Path) -> None:
    from tuner.xtuner_cli import tool_environment, xtuner_command

    command = [*xtuner_command(), "convert", *arguments]
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"\n==== tuner: xtuner convert {' '.join(arguments)}\n")
        log.flush()
        # `xtuner` exits 0 even when the tool it starts fails: the caller checks the output.
        subprocess.run(command, env=tool_environment(), stdout=log, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=False)


def _last_error(log_path: Path) -> str:
    return read_progress(log_path).last_error or "no error message; see the log"


def pth_to_hf(config: Path, checkpoint: Path, out_dir: Path, log_path: Path) -> Path:
    """Run ``xtuner convert pth_to_hf``; the adapter is saved as safetensors."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _run_xtuner(["pth_to_hf", str(config), str(checkpoint), str(out_dir), "--safe-serialization"], log_path)
    if not (out_dir / "adapter_config.json").exists():
        raise ConversionError(f"Converting {checkpoint.name} to a Hugging Face adapter failed: "
                              f"{_last_error(log_path)} (log: {log_path})")
    return out_dir


def merge_adapter(base_model: str, adapter_dir: Path, out_dir: Path, log_path: Path,
                  max_shard_size: str = "2GB", device: str = "auto") -> Path:
    """Run ``xtuner convert merge``: base + adapter → a standalone model in ``out_dir``."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    _run_xtuner(["merge", resolve_model(base_model), str(adapter_dir), str(out_dir),
                 "--max-shard-size", max_shard_size, "--safe-serialization", "--device", device], log_path)
    if not (out_dir / "config.json").exists() or not any(out_dir.glob("*.safetensors")):
        raise ConversionError(f"Merging the adapter into {base_model} failed: {_last_error(log_path)} "
                              f"(log: {log_path})")
    return out_dir


def write_adapter_info(adapter_dir: Path, info: dict) -> None:
    (adapter_dir / ADAPTER_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n",
                                            encoding="utf-8")


def read_adapter_info(folder: Path) -> dict:
    for name in (ADAPTER_INFO, MODEL_INFO):
        path = Path(folder) / name
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
    return {}


def convert_job(job, checkpoint: Path | None = None) -> Path:
    """A job's last (or given) checkpoint → ``job/adapter``."""
    checkpoint = checkpoint or job.last_checkpoint()
    if checkpoint is None:
        raise ConversionError(f"Job {job.id} has no checkpoint to convert yet.")
    spec = job.spec()
    adapter = pth_to_hf(job.config_path, checkpoint, job.adapter_dir, job.dir / "convert.log")
    shutil.copyfile(job.config_path, adapter / "xtuner_config.py")
    from xtuner.utils import PROMPT_TEMPLATE

    write_adapter_info(adapter, {
        "base_model": spec.model,
        "template": spec.prompt_template,
        "template_spec": dict(PROMPT_TEMPLATE[spec.prompt_template]),  # lets chat run without XTuner
        "system": spec.system,
        "method": spec.method,
        "checkpoint": checkpoint.name,
        "job": job.id,
    })
    return adapter


def merge_job(job, max_shard_size: str = "2GB", device: str = "auto") -> Path:
    if not (job.adapter_dir / "adapter_config.json").exists():
        convert_job(job)
    spec = job.spec()
    merged = merge_adapter(spec.model, job.adapter_dir, job.merged_dir, job.dir / "convert.log",
                           max_shard_size, device)
    info = read_adapter_info(job.adapter_dir)
    info["merged_from"] = info.pop("base_model", spec.model)
    (merged / MODEL_INFO).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return merged
