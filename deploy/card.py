"""The model card (README.md with the metadata each hub reads) and the loss-curve image of a job."""

from __future__ import annotations

import json
from pathlib import Path

from tuner.models import is_embedded
from tuner.spec import TrainSpec

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def public_base_model(model: str) -> str:
    """How the base model is named for others: the embedded default by its hub id, a local folder by its name."""
    if is_embedded(model):
        return EMBEDDED_HUB_ID
    path = Path(model)
    if path.is_absolute() and (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        return str(config.get("_name_or_path") or path.name)
    return model


def loss_curve_png(losses: list[tuple[int, float]], out: Path) -> Path | None:
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=120)
    axis.plot([i for i, _ in losses], [loss for _, loss in losses], color="#3b6fd8", linewidth=1.6)
    axis.set_xlabel("iteration")
    axis.set_ylabel("training loss")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


def _front_matter(fields: dict) -> str:
    lines = ["---"]
    for key, value in fields.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines.extend(f"- {item}" for item in value)
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines + ["---", ""])


def model_card(spec: TrainSpec, repo_id: str, kind: str, data_summary: dict, losses: list[tuple[int, float]],
               license: str = "apache-2.0", has_loss_image: bool = True) -> str:
    """README.md for an adapter (``kind="adapter"``) or a merged model (``kind="merged"``)."""
    base = public_base_model(spec.model)
    method = "QLoRA" if spec.method == "qlora" else "LoRA"
    meta = {"base_model": base, "library_name": "peft" if kind == "adapter" else "transformers",
            "license": license, "language": ["zh", "en"],
            "tags": ["xtuner", method.lower(), "tuner"] + (["base_model:adapter:" + base] if kind == "adapter" else []),
            "pipeline_tag": "text-generation"}
    settings = [("method", method), ("prompt template", spec.prompt_template), ("max_length", spec.max_length),
                ("pack_to_max_length", spec.pack_to_max_length), ("batch_size", spec.batch_size),
                ("accumulative_counts", spec.accumulative_counts), ("max_epochs", spec.max_epochs),
                ("lr", spec.lr), ("warmup_ratio", spec.warmup_ratio), ("LoRA r / alpha / dropout",
                                                                        f"{spec.lora_r} / {spec.lora_alpha} / {spec.lora_dropout}"),
                ("seed", spec.seed)]
    table = "\n".join(f"| {name} | {value} |" for name, value in settings)
    final = f"{losses[-1][1]:.4f} after {losses[-1][0]} iterations" if losses else "not recorded"
    if kind == "adapter":
        usage = f"""```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{base}")
```

With XTuner: `xtuner chat {base} --adapter {repo_id} --prompt-template {spec.prompt_template}`"""
    else:
        usage = f"""```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
```

With XTuner: `xtuner chat {repo_id} --prompt-template {spec.prompt_template}`"""
    system = f"\nSystem prompt used in training: `{spec.system}`\n" if spec.system else ""
    image = "\n![training loss](loss.png)\n" if has_loss_image and losses else ""
    what = "A LoRA adapter" if kind == "adapter" else "A model merged from a LoRA adapter"
    return _front_matter(meta) + f"""
# {repo_id.split('/')[-1]}

{what} for [{base}](https://huggingface.co/{base}), fine-tuned with [XTuner](https://github.com/InternLM/xtuner)
({method}). Prompts use XTuner's `{spec.prompt_template}` template.
{system}
## Training data

{data_summary.get('records', '?')} conversations, {data_summary.get('turns', '?')} turns.

## Settings

| setting | value |
| --- | --- |
{table}

## Training loss

Final loss: {final}.
{image}
## How to use

{usage}
"""
