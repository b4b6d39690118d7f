"""Chat with a base model, a base model + adapter (PEFT, unmerged), or a merged model.

Prompts are built with the XTuner template the adapter was trained with, turn by turn as
``xtuner chat`` does, so the fine-tuned model sees at chat time what it saw in training.
"""

from __future__ import annotations

import queue
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tuner.convert import read_adapter_info
from tuner.models import guess_template, resolve_model

KINDS = ("base", "adapter", "merged")


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 0.9
    top_k: int = 40
    repetition_penalty: float = 1.0  # as `xtuner chat`; small models answer worse with a penalty
    min_new_tokens: int = 0
    fast_decode: bool = True  # use the model's static-cache decoder when it was loaded with one


@dataclass
class ChatModel:
    model: object
    tokenizer: object
    template: dict
    template_name: str
    system: str = ""
    description: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)
    decoder: object | None = None  # tuner.decode.StaticDecoder when fast decoding is on
    decoding: str = "generate"  # how replies are decoded, for the user: "CUDA graphs (ready in 1.2 s)"


class ChatLoadError(Exception):
    """The model or adapter could not be loaded (say which, and why)."""


TEMPLATES_SNAPSHOT = Path(__file__).parent / "prompt_templates.json"


def _template(name: str) -> dict:
    try:
        from xtuner.utils import PROMPT_TEMPLATE
    except ImportError:  # a chat-only app bundle: XTuner's table, saved when the bundle was made
        import json

        PROMPT_TEMPLATE = json.loads(TEMPLATES_SNAPSHOT.read_text(encoding="utf-8"))
    if name not in PROMPT_TEMPLATE:
        raise ChatLoadError(f"Unknown prompt template {name!r}.")
    return dict(PROMPT_TEMPLATE[name])


def build_prompt(template: dict, message: str, history: list[tuple[str, str]] | None = None,
                 system: str = "") -> str:
    """The text XTuner's template gives for a conversation so far and a new message."""
    text = template.get("SYSTEM", "").format(system=system) if system and template.get("SYSTEM") else ""
    suffix, sep = template.get("SUFFIX", ""), template.get("SEP", "")
    for number, (user, assistant) in enumerate(history or [], start=1):
        text += template["INSTRUCTION"].format(input=user, round=number, bot_name="assistant")
        text += assistant + suffix + sep
    text += template["INSTRUCTION"].format(input=message, round=len(history or []) + 1, bot_name="assistant")
    return text


def load_chat_model(kind: str = "base", model: str = "", adapter: str | Path | None = None,
                    load_in_4bit: bool = False, template: str = "", fast_decode: bool | None = None) -> ChatModel:
    """Load for chat. ``kind``: base (``model``), adapter (``adapter`` on its base), merged (``model``).

    ``fast_decode``: decode with a static KV cache and CUDA graphs (tuner/decode.py), captured here, at
    load time, so the first reply does not pay for it; models or settings it does not handle fall back
    to ``generate``. Default: off until bench/chat_speed.py has measured it on the GPU machine (set
    TUNER_FAST_DECODE=1 to turn it on where there is a CUDA GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind not in KINDS:
        raise ChatLoadError(f"kind must be one of {', '.join(KINDS)}")
    info: dict = {}
    if kind == "adapter":
        if adapter is None or not (Path(adapter) / "adapter_config.json").exists():
            raise ChatLoadError(f"No adapter at {adapter}: it needs adapter_config.json.")
        info = read_adapter_info(Path(adapter))
        model = model or info.get("base_model", "")
        if not model:
            import json

            model = json.loads((Path(adapter) / "adapter_config.json").read_text())["base_model_name_or_path"]
    elif kind == "merged":
        info = read_adapter_info(Path(model))
    template_name = template or info.get("template") or guess_template(model)
    cuda = torch.cuda.is_available()
    kwargs: dict = {"torch_dtype": torch.float32, "trust_remote_code": True}
    if cuda:
        kwargs["torch_dtype"] = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        kwargs["device_map"] = "cuda"
        if load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_compute_dtype=kwargs["torch_dtype"],
                bnb_4bit_use_double_quant=True, bnb_4bit_quant_type="nf4")
    elif load_in_4bit:
        raise ChatLoadError("4-bit loading needs a CUDA GPU; this machine has none.")
    path = resolve_model(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
        llm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if kind == "adapter":
            from peft import PeftModel

            llm = PeftModel.from_pretrained(llm, str(adapter), is_trainable=False)
    except (OSError, ValueError) as error:
        raise ChatLoadError(f"Could not load {model or adapter}: {error}") from error
    llm.eval()
    described = {"base": f"base {model}", "adapter": f"{model} + adapter {adapter}", "merged": f"merged {model}"}
    saved = info.get("template_spec") if template_name == info.get("template") else None
    chat = ChatModel(llm, tokenizer, saved or _template(template_name), template_name, info.get("system", ""),
                     described[kind])
    if fast_decode is None:
        fast_decode = cuda and os.environ.get("TUNER_FAST_DECODE", "0") == "1"
    if fast_decode:
        _prepare_fast_decode(chat, graphs=cuda)
    return chat


def _prepare_fast_decode(chat: ChatModel, graphs: bool) -> None:
    """Set up the static-cache decoder and capture its first CUDA graph now (about a second for a 7B
    model); on any failure the chat keeps using ``generate`` and says why in ``chat.decoding``."""
    import logging

    try:
        from tuner.decode import DecodeUnsupported, StaticDecoder
    except ImportError as error:  # a bundle made without tuner/decode.py
        chat.decoding = f"generate ({error})"
        return
    started = time.perf_counter()
    try:
        decoder = StaticDecoder(chat.model, graphs=graphs)
        decoder.warm_up(512)
    except DecodeUnsupported as error:
        chat.decoding = f"generate ({error})"
        return
    except Exception as error:  # noqa: BLE001 - a capture that fails must not stop the chat
        logging.getLogger(__name__).warning("fast decoding unavailable, using generate: %s", error)
        chat.decoding = f"generate (fast decoding failed: {type(error).__name__}: {error})"[:300]
        return
    chat.decoder = decoder
    how = "CUDA graphs" if decoder.graphs else "static cache"
    chat.decoding = f"{how} (ready in {time.perf_counter() - started:.1f} s)"


def _stop_ids(chat: ChatModel) -> list[int]:
    tokenizer = chat.tokenizer
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for word in chat.template.get("STOP_WORDS", []) + [chat.template.get("SUFFIX", "")]:
        if word:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    return sorted(ids)


def stream_reply(chat: ChatModel, message: str, history: list[tuple[str, str]] | None = None,
                 system: str | None = None, settings: GenerationSettings | None = None) -> Iterator[str]:
    """Yield the reply as it grows (the whole text so far each time); stops at end of turn."""
    settings = settings or GenerationSettings()
    prompt = build_prompt(chat.template, message, history, chat.system if system is None else system)
    inputs = chat.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    stops = [w for w in chat.template.get("STOP_WORDS", []) if w]
    if settings.fast_decode and chat.decoder is not None and \
            _fast_decode_fits(chat, inputs["input_ids"].shape[-1], settings):
        pieces = _fast_pieces(chat, inputs["input_ids"][0].tolist(), settings)
    else:
        pieces = _generate_pieces(chat, inputs, settings)
    text = ""
    try:
        for text in pieces:
            cut = min((text.find(w) for w in stops if w in text), default=-1)
            if cut >= 0:
                yield text[:cut].strip()
                break
            yield text.strip()
    finally:
        pieces.close()  # stops the decoding thread when the caller stops early


def _generation_kwargs(chat: ChatModel, settings: GenerationSettings) -> dict:
    sampling = settings.temperature > 0
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=sampling, min_new_tokens=settings.min_new_tokens,
                  repetition_penalty=settings.repetition_penalty, eos_token_id=_stop_ids(chat),
                  pad_token_id=chat.tokenizer.pad_token_id or chat.tokenizer.eos_token_id)
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    return kwargs


def _generate_pieces(chat: ChatModel, inputs, settings: GenerationSettings) -> Iterator[str]:
    """The reply so far, growing, from ``generate`` with a streamer (the path for every model)."""
    import torch
    from transformers import TextIteratorStreamer

    inputs = {k: v.to(chat.model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    kwargs = dict(**inputs, streamer=streamer, **_generation_kwargs(chat, settings))
    errors: list[BaseException] = []

    def generate() -> None:
        try:
            with chat.lock, torch.inference_mode():
                chat.model.generate(**kwargs)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(error)
            streamer.end()

    thread = threading.Thread(target=generate, daemon=True)
    thread.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield text
    finally:
        thread.join()
    if errors:
        raise errors[0]


def _fast_decode_fits(chat: ChatModel, prompt_tokens: int, settings: GenerationSettings) -> bool:
    from tuner.decode import DecodeUnsupported, generation_config_supported

    length = prompt_tokens + settings.max_new_tokens + 1
    try:
        chat.decoder.bucket(length)
    except DecodeUnsupported:
        return False
    if not generation_config_supported(chat.decoder.base, _generation_kwargs(chat, settings)):
        return False
    try:
        with chat.lock:
            chat.decoder.prepare(length)  # a longer conversation: its cache size's graph, captured now
    except Exception as error:  # noqa: BLE001 - the chat goes on with generate
        import logging

        logging.getLogger(__name__).warning("fast decoding off for this model, using generate: %s", error)
        chat.decoder = None
        chat.decoding = f"generate (fast decoding failed: {type(error).__name__}: {error})"[:300]
        return False
    return True


def _fast_pieces(chat: ChatModel, prompt_ids: list[int], settings: GenerationSettings) -> Iterator[str]:
    """The reply so far, growing, from the static-cache decoder (tuner/decode.py), run in a thread so a
    slow consumer does not hold the GPU back. New text is yielded as soon as it decodes to whole
    characters (``generate``'s streamer waits for the end of each word)."""
    from tuner.decode import Sampling

    sampling = Sampling(max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                        temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                        repetition_penalty=settings.repetition_penalty)
    stop_ids = _stop_ids(chat)
    tokens: queue.Queue = queue.Queue()
    cancelled = threading.Event()
    end = object()

    def produce() -> None:
        try:
            with chat.lock:
                for token in chat.decoder.decode(prompt_ids, sampling, stop_ids, cancelled):
                    tokens.put(token)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            tokens.put(error)
        tokens.put(end)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    ids: list[int] = []
    shown = ""
    finished = False
    try:
        while not finished:
            batch = [tokens.get(timeout=600)]
            while True:  # take everything already decoded: one detokenization for the lot
                try:
                    batch.append(tokens.get_nowait())
                except queue.Empty:
                    break
            for item in batch:
                if item is end:
                    finished = True
                elif isinstance(item, BaseException):
                    raise item
                elif item not in stop_ids:
                    ids.append(item)
            text = chat.tokenizer.decode(ids, skip_special_tokens=True)
            if text.endswith("\ufffd") and not finished:
                continue  # a character cut in the middle of its bytes: wait for the rest
            if text != shown or finished:
                shown = text
                yield text
    finally:
        cancelled.set()
        thread.join()


def reply(chat: ChatModel, message: str, history: list[tuple[str, str]] | None = None,
          system: str | None = None, settings: GenerationSettings | None = None) -> str:
    text = ""
    for text in stream_reply(chat, message, history, system, settings):
        pass
    return text


class ChatModelCache:
    """Keeps the last few loaded models, so a conversation does not reload at every message."""

    def __init__(self, size: int = 3):
        self.size = size
        self._models: OrderedDict[tuple, ChatModel] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, model: str = "", adapter: str | Path | None = None,
            load_in_4bit: bool = False, template: str = "", fast_decode: bool | None = None) -> ChatModel:
        key = (kind, model, str(adapter or ""), load_in_4bit, template, fast_decode)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = load_chat_model(kind, model, adapter, load_in_4bit, template, fast_decode)
            self._models[key] = loaded
            while len(self._models) > self.size:
                self._models.popitem(last=False)
            return loaded
