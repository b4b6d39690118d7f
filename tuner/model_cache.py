"""Loaded chat models, kept while they fit in memory: the least recently used goes first when the next one
would not fit, but never one that is writing a reply.

What a model will take is estimated before loading, from its weight files and the dtype it is loaded in
(float32 on a CPU, bf16/fp16 on a GPU, about half a byte a parameter in 4 bits), and compared with the
memory free where it will live (RAM via psutil, or the GPU's via ``torch.cuda.mem_get_info``). Once loaded,
its real size (parameters and buffers) is what counts.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from collections import OrderedDict
from pathlib import Path

GIB = 1 << 30
_BYTES_PER_PARAMETER = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def free_bytes() -> int:
    """Memory free where chat models are loaded: the GPU's when there is one (what torch holds unused
    counts as free), else RAM."""
    if _on_cuda():
        import torch

        free, _ = torch.cuda.mem_get_info()
        return int(free + torch.cuda.memory_reserved() - torch.cuda.memory_allocated())
    import psutil

    return int(psutil.virtual_memory().available)


def model_bytes(model) -> int:
    """Bytes the loaded model's parameters and buffers take."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def chat_bytes(chat) -> int:
    """Bytes a loaded chat model holds: its weights, and its slot batcher's key-value cache (on CUDA that cache
    is sized at load for every batch size: 4.3 GB for a 7B model at 32 replies of 256 positions)."""
    batcher = getattr(chat, "slot_batcher", None)
    return model_bytes(chat.model) + (batcher.slots * batcher.slot_bytes(batcher.length) if batcher else 0)


def _weights_bytes(folder: Path) -> int:
    for pattern in ("*.safetensors", "*.bin", "*.pt"):
        files = [f for f in folder.glob(pattern) if not f.name.startswith(("optimizer", "training_args"))]
        if files:
            return sum(f.stat().st_size for f in files)
    return 0


def estimate_load_bytes(kind: str, model: str = "", adapter: str | Path | None = None,
                        load_in_4bit: bool = False) -> int:
    """Bytes loading this model will take, from its files; 0 when they are not on this machine (a hub id
    not downloaded yet: only the count bound applies then)."""
    from tuner.convert import read_adapter_info
    from tuner.models import ModelNotFound, resolve_model

    extra = 0
    if kind == "adapter" and adapter:
        extra = _weights_bytes(Path(adapter)) * 2  # LoRA weights, stored small; loaded in the base's dtype
        model = model or read_adapter_info(Path(adapter)).get("base_model", "")
    try:
        folder = Path(resolve_model(model))
    except ModelNotFound:
        return 0
    if not folder.is_dir():
        return 0
    stored_dtype = "float16"
    if (folder / "config.json").is_file():
        stored_dtype = str(json.loads((folder / "config.json").read_text()).get("torch_dtype") or "float16")
    parameters = _weights_bytes(folder) / _BYTES_PER_PARAMETER.get(stored_dtype, 2)
    loaded = 0.6 if load_in_4bit else (2 if _on_cuda() else 4)
    return int(parameters * loaded) + extra


class ChatModelCache:
    """Keeps loaded models for the next message: at most ``size`` of them, and only as many as fit.

    ``memory_limit``: bytes all loaded models together may take (default: ``TUNER_CHAT_MEMORY_GB`` if set,
    else no limit but the free memory); ``headroom``: a model needs this much more free memory than its
    estimate (activations, KV cache); ``wait_seconds``: how long a load waits for a replying model to finish
    before it gives up."""

    def __init__(self, size: int = 3, memory_limit: int | None = None, headroom: float = 1.25,
                 wait_seconds: float = 120.0):
        from_env = os.environ.get("TUNER_CHAT_MEMORY_GB")
        self.size = size
        self.memory_limit = memory_limit if memory_limit is not None else (
            int(float(from_env) * GIB) if from_env else None)
        self.headroom = headroom
        self.wait_seconds = wait_seconds
        self._models: OrderedDict[tuple, object] = OrderedDict()  # least recently used first
        self._bytes: dict[tuple, int] = {}
        self._loading: dict[tuple, threading.Event] = {}
        self._lock = threading.Lock()
        self.evicted: list[tuple] = []  # keys evicted so far, oldest first (what tests and logs look at)

    def loaded(self) -> list[tuple]:
        with self._lock:
            return list(self._models)

    def get(self, kind: str, model: str = "", adapter: str | Path | None = None,
            load_in_4bit: bool = False, template: str = "", fast_decode: bool | None = None):
        """The loaded ChatModel for these arguments, loading it (and evicting others) if needed. Raises
        ChatLoadError when it cannot be loaded, or does not fit while the others are replying."""
        from tuner.chat import load_chat_model

        key = (kind, model, str(adapter or ""), load_in_4bit, template, fast_decode)
        while True:
            with self._lock:
                if key in self._models:
                    self._models.move_to_end(key)
                    return self._models[key]
                pending = self._loading.get(key)
                if pending is None:
                    self._loading[key] = threading.Event()
                    break
            pending.wait()  # another visitor is loading the same model: take theirs
        try:
            self._make_room(key, estimate_load_bytes(kind, model, adapter, load_in_4bit))
            chat = load_chat_model(kind, model, adapter, load_in_4bit, template, fast_decode)
            with self._lock:
                self._models[key] = chat
                self._bytes[key] = chat_bytes(chat)
                while len(self._models) > self.size and self._evict_one(spare=key):
                    pass
            return chat
        finally:
            with self._lock:
                self._loading.pop(key).set()

    # ------------------------------------------------------------------------------------- room
    def _make_room(self, key: tuple, needed: int) -> None:
        from tuner.chat import ChatLoadError

        if needed <= 0:
            return
        deadline = time.monotonic() + self.wait_seconds
        released = 0  # RAM given back by evicted models may not show as available at once
        while True:
            with self._lock:
                free = free_bytes() + (0 if _on_cuda() else released)
                held = sum(self._bytes.values())
                fits = needed * self.headroom <= free and (
                    self.memory_limit is None or held + needed <= self.memory_limit)
                if fits:
                    return
                size = self._bytes.get(next(iter(self._idle()), None), 0)
                if self._evict_one(spare=key):
                    released += size
                    continue
                busy = len(self._models)
            what = f"{key[1] or key[2]} needs about {needed / GIB:.2f} GiB"
            limit = f" (limit {self.memory_limit / GIB:.2f} GiB, {held / GIB:.2f} GiB held)" if self.memory_limit else ""
            if not busy:
                raise ChatLoadError(f"Not enough memory: {what} and {free / GIB:.2f} GiB is free{limit}. "
                                    "Choose a smaller model, or load it in 4 bits on a GPU.")
            if time.monotonic() > deadline:
                raise ChatLoadError(f"Not enough memory: {what}, {free / GIB:.2f} GiB is free{limit}, and the "
                                    f"{busy} loaded model(s) are all replying. Try again when a reply has finished.")
            time.sleep(0.5)

    def _idle(self) -> list[tuple]:
        """Loaded models writing no reply, least recently used first."""
        return [key for key, chat in self._models.items()
                if not chat.replies and not any(b and b.busy for b in (chat.batcher, chat.slot_batcher))]

    def _evict_one(self, spare: tuple) -> bool:
        """Drop the least recently used idle model (not ``spare``); False when there is none."""
        for key in self._idle():
            if key == spare:
                continue
            chat = self._models.pop(key)
            self._bytes.pop(key, None)
            for batcher in (chat.batcher, chat.slot_batcher):
                if batcher:
                    batcher.close()
            self.evicted.append(key)
            del chat
            gc.collect()
            if _on_cuda():
                import torch

                torch.cuda.empty_cache()
            return True
        return False


_SHARED: ChatModelCache | None = None
_SHARED_LOCK = threading.Lock()


def shared_cache() -> ChatModelCache:
    """The process's cache, so the page and the API load a model once and batch their replies together."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ChatModelCache()
        return _SHARED
