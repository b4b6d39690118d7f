"""Chat with a base model, a base model + adapter, or a merged model. An adapter on a bf16/fp16/fp32 base is
merged into its freshly loaded base at load (as fast as a merged model); in 4 bits, or with
``TUNER_MERGE_ADAPTER=0``, it stays a PEFT model, unmerged.

Prompts are built with the XTuner template the adapter was trained with, turn by turn as
``xtuner chat`` does, so the fine-tuned model sees at chat time what it saw in training.
"""

from __future__ import annotations

import queue
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

from tuner.convert import read_adapter_info
from tuner.models import asks_for_remote_code, guess_template, remote_code_allowed, resolve_model

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
    batcher: object | None = None  # tuner.batching.Batcher, made at the first reply; False: this model cannot batch
    slot_batcher: object | None = None  # tuner.slot_batching.SlotBatcher (CUDA graphs), made likewise
    decoder_in_use: bool = False  # a reply is being written by ``decoder`` (one at a time)
    replies: int = 0  # replies being written now: a model that is replying is never evicted


class ChatLoadError(Exception):
    """The model or adapter could not be loaded (say which, and why)."""


def _template(name: str) -> dict:
    from tuner.models import prompt_templates  # without XTuner (a chat-only bundle): the saved table

    PROMPT_TEMPLATE = prompt_templates()
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
    to ``generate``. Default: on where there is a CUDA GPU (H100, 7B-shaped: 100 tokens/s against 7-14 through
    ``generate``, bench/results/h100-chat-speed.txt); TUNER_FAST_DECODE=0 turns it off."""
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
    trust = remote_code_allowed(model)
    kwargs: dict = {"torch_dtype": torch.float32, "trust_remote_code": trust}
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
    if not trust and asks_for_remote_code(path):
        raise ChatLoadError(f"{model} asks to run its own code (trust_remote_code), which is off for models the "
                            "owner has not allowed: add it to TUNER_TRUSTED_MODELS to allow it.")
    merged_at_load = ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        llm = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        if kind == "adapter":
            from peft import PeftModel

            llm = PeftModel.from_pretrained(llm, str(adapter), is_trainable=False)
            if _merges_adapter(load_in_4bit):
                llm = llm.merge_and_unload()  # a plain model again: decodes as fast as a merged one
                merged_at_load = " (merged at load)"
    except (OSError, ValueError) as error:
        raise ChatLoadError(f"Could not load {model or adapter}: {error}") from error
    llm.eval()
    described = {"base": f"base {model}", "adapter": f"{model} + adapter {adapter}{merged_at_load}",
                 "merged": f"merged {model}"}
    saved = info.get("template_spec") if template_name == info.get("template") else None
    chat = ChatModel(llm, tokenizer, saved or _template(template_name), template_name, info.get("system", ""),
                     described[kind])
    if fast_decode is None:
        fast_decode = cuda and os.environ.get("TUNER_FAST_DECODE", "1") != "0"
    if fast_decode:
        _prepare_fast_decode(chat, graphs=cuda)
    return chat


def _merges_adapter(load_in_4bit: bool) -> bool:
    """Whether an adapter is merged into its base at load. The base was loaded for this chat model alone (the
    cache loads the plain base under another key), so merging in place changes nothing else, and the merged
    weights take no more memory than the base. A LoRA on a 4-bit base stays unmerged: merging there would
    round the update into NF4. ``TUNER_MERGE_ADAPTER=0`` keeps every adapter unmerged."""
    return not load_in_4bit and os.environ.get("TUNER_MERGE_ADAPTER", "1") != "0"


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
    kernels = _fewer_kernels(chat.model) if graphs else ""
    try:
        decoder = StaticDecoder(chat.model, graphs=graphs, compile=os.environ.get("TUNER_DECODE_COMPILE") == "1")
        decoder.warm_up()
    except DecodeUnsupported as error:
        chat.decoding = f"generate ({error})"
        return
    except Exception as error:  # noqa: BLE001 - a capture that fails must not stop the chat
        logging.getLogger(__name__).warning("fast decoding unavailable, using generate: %s", error)
        chat.decoding = f"generate (fast decoding failed: {type(error).__name__}: {error})"[:300]
        return
    chat.decoder = decoder
    how = "CUDA graphs" if decoder.graphs else "static cache"
    chat.decoding = f"{how}{f' with {kernels}' if kernels else ''} (ready in {time.perf_counter() - started:.1f} s)"
    if decoder.graphs and os.environ.get("TUNER_BATCHING", "1") != "0":
        chat.slot_batcher = _make_slot_batcher(chat)
        if chat.slot_batcher:  # visitors arriving together must not wait for captures
            try:
                chat.decoding += f"; {chat.slot_batcher.warm_up()}"
            except Exception as error:  # noqa: BLE001 - the chat goes on; concurrent replies use the eager batch
                logging.getLogger(__name__).warning("slot batching unavailable: %s", error)
                chat.slot_batcher = False


def _fewer_kernels(model) -> str:
    """tuner/decode_kernels.py on a CUDA model (fused projections, Liger's norms and rotary), checked against
    the model's own logits; "" when nothing applied. A failure leaves the model as it was."""
    import logging

    try:
        from tuner.decode_kernels import enabled, restore, speed_up_decoding
    except ImportError:  # a bundle made without it
        return ""
    if not enabled():  # TUNER_DECODE_KERNELS=0
        return ""
    try:
        return speed_up_decoding(model)
    except Exception as error:  # noqa: BLE001 - the chat goes on with the model's own kernels
        restore(model)
        logging.getLogger(__name__).warning("decode kernels unavailable: %s", error)
        return ""


def _stop_ids(chat: ChatModel) -> list[int]:
    tokenizer = chat.tokenizer
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for word in chat.template.get("STOP_WORDS", []) + [chat.template.get("SUFFIX", "")]:
        if word:
            encoded = tokenizer.encode(word, add_special_tokens=False)
            if len(encoded) == 1:
                ids.add(encoded[0])
    return sorted(ids)


class PromptTooLong(ValueError):
    """The conversation does not fit in the model's context (say how long it is, and the limit)."""


@dataclass
class ReplyUsage:
    """Filled in by ``stream_reply`` as the reply grows: what the OpenAI API reports."""
    prompt_tokens: int = 0
    completion_tokens: int = 0  # generated tokens, the end-of-turn token included
    finish_reason: str = ""  # stop: end of turn or a stop string; length: max_new_tokens


_END = object()
_REPLIES = threading.Lock()
_DECODER_FREE = threading.Condition(_REPLIES)  # a batch-1 decoder was given back


def prompt_token_ids(chat: ChatModel, message: str, history: list[tuple[str, str]] | None = None,
                     system: str | None = None) -> list[int]:
    prompt = build_prompt(chat.template, message, history, chat.system if system is None else system)
    return list(chat.tokenizer.encode(prompt, add_special_tokens=False))


def context_length(chat: ChatModel) -> int:
    """Tokens the model reads at most, prompt and reply together."""
    config = getattr(chat.model, "config", None)
    return int(getattr(config, "max_position_embeddings", 0) or 0) or 1 << 30


def stream_reply(chat: ChatModel, message: str, history: list[tuple[str, str]] | None = None,
                 system: str | None = None, settings: GenerationSettings | None = None, *,
                 stop: Sequence[str] = (), usage: ReplyUsage | None = None) -> Iterator[str]:
    """Yield the reply as it grows (the whole text so far each time); stops at end of turn, at a stop string
    (``stop``, besides the template's; never shown, not even in part), or at ``max_new_tokens``.

    Concurrent replies from one model are decoded together (tuner/batching.py); closing the generator
    (the visitor left) stops this reply's decoding. ``usage`` is filled in as the reply goes."""
    settings = settings or GenerationSettings()
    usage = usage if usage is not None else ReplyUsage()
    ids = prompt_token_ids(chat, message, history, system)
    usage.prompt_tokens = len(ids)
    limit = context_length(chat)
    if len(ids) >= limit:
        raise PromptTooLong(f"The conversation is {len(ids)} tokens and this model reads at most {limit}: "
                            "clear the chat or shorten the message.")
    settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, limit - len(ids)))
    stops = [w for w in list(chat.template.get("STOP_WORDS", [])) + list(stop) if w]
    _count_reply(chat, 1)
    try:
        pieces = _pieces(chat, ids, settings, usage)
        shown, text = None, ""
        try:
            for text in pieces:
                cut = min((text.find(w) for w in stops if w in text), default=-1)
                if cut >= 0:
                    usage.finish_reason = "stop"
                    yield text[:cut].strip()
                    return
                visible = text[:len(text) - _partial_stop(text, stops)].strip()
                if visible != shown:
                    shown = visible
                    yield visible
        finally:
            pieces.close()  # stops the decoding when the caller stops early
        if text.strip() != shown:
            yield text.strip()
    finally:
        _count_reply(chat, -1)


def _partial_stop(text: str, stops: list[str]) -> int:
    """How many characters at the end of ``text`` may be the start of a stop string (held back until known)."""
    return max((n for w in stops for n in range(min(len(w) - 1, len(text)), 0, -1) if text.endswith(w[:n])),
               default=0)


def _count_reply(chat: ChatModel, change: int) -> None:
    with _REPLIES:
        chat.replies += change


def _pieces(chat: ChatModel, ids: list[int], settings: GenerationSettings, usage: ReplyUsage) -> Iterator[str]:
    """The reply so far, growing, from the best decoder for this model and moment.

    On CUDA every reply goes to the slot batcher (tuner/slot_batching.py): a step of all the replies under way is
    one CUDA-graph replay, and a reply alone there is about as fast as on the batch-1 decoder (H100, 7B-shaped:
    97.7 against 101.2 tokens/s). Sharing the model's lock token by token between the two starved one of them.
    On CPU a reply alone takes the static-cache decoder (when the model was loaded with one) and replies that come
    while others are written go to the eager batch (tuner/batching.py). Models or settings none of them handles
    use ``generate``, one reply at a time."""
    graphs = settings.fast_decode and chat.decoder is not None and getattr(chat.decoder, "graphs", False)
    if graphs:
        batcher = _batcher(chat, settings, slots=True)
        if batcher is not None and batcher.fits(len(ids) + settings.max_new_tokens + 1):
            return _batched_pieces(chat, batcher, ids, settings, usage)
        if _take_decoder(chat, alone=True, wait=True):  # no slot batcher: one reply at a time, as before
            if _fast_decode_fits(chat, len(ids), settings):
                return _fast_pieces(chat, ids, settings, usage)
            _give_back_decoder(chat)
    elif settings.fast_decode and chat.decoder is not None:
        if _take_decoder(chat, alone=chat.replies <= 1 and not (chat.batcher and chat.batcher.busy)):
            if _fast_decode_fits(chat, len(ids), settings):
                return _fast_pieces(chat, ids, settings, usage)
            _give_back_decoder(chat)
    batcher = _batcher(chat, settings)
    if batcher is not None:
        return _batched_pieces(chat, batcher, ids, settings, usage)
    return _generate_pieces(chat, ids, settings, usage)


def _take_decoder(chat: ChatModel, alone: bool, wait: bool = False) -> bool:
    """Reserve the batch-1 decoder for one reply (``alone``: no other reply is being batched; ``wait``: until the
    reply on it has finished, where there is no batch to go to). One reply at a time holds it, and only a reserved
    reply calls into it: a second one waiting on its lock while holding the model's lock would block the first,
    which takes the model's lock for each token."""
    with _DECODER_FREE:
        if wait:
            _DECODER_FREE.wait_for(lambda: not chat.decoder_in_use)
        elif not alone or chat.decoder_in_use:
            return False
        chat.decoder_in_use = True
        return True


def _give_back_decoder(chat: ChatModel) -> None:
    with _DECODER_FREE:
        chat.decoder_in_use = False
        _DECODER_FREE.notify_all()


def _batcher(chat: ChatModel, settings: GenerationSettings, slots: bool = False):
    """The model's batcher (made on first use): with ``slots``, the CUDA-graph slot batcher (None where it cannot
    serve this model); else the eager one. None where batching is off or cannot serve these settings."""
    if os.environ.get("TUNER_BATCHING", "1") == "0":  # one reply at a time, as before (benchmarks compare)
        return None
    try:
        from tuner.batching import Batcher, supports_batching
        from tuner.decode import generation_config_supported
    except ImportError:  # a bundle made without them
        return None
    if not generation_config_supported(chat.model, _generation_kwargs(chat, settings)):
        return None
    with _REPLIES:
        if slots:
            if chat.slot_batcher is None:
                chat.slot_batcher = _make_slot_batcher(chat)
            return chat.slot_batcher or None
        if chat.batcher is None:
            chat.batcher = Batcher(chat.model, chat.lock) if supports_batching(chat.model) else False
    return chat.batcher or None


def _make_slot_batcher(chat: ChatModel):
    """A SlotBatcher for ``chat``'s model, or False (not this model; TUNER_SLOT_BATCHING=0)."""
    if os.environ.get("TUNER_SLOT_BATCHING", "1") == "0":
        return False
    try:
        from tuner.slot_batching import SlotBatcher, supports_slots
    except ImportError:  # a bundle made without it
        return False
    if not supports_slots(chat.model):
        return False
    try:
        return SlotBatcher(chat.model, chat.lock, graphs=True)
    except Exception as error:  # noqa: BLE001 - the chat goes on with the batch-1 decoder
        import logging

        logging.getLogger(__name__).warning("slot batching unavailable: %s", error)
        return False


def _sampling(settings: GenerationSettings):
    from tuner.decode import Sampling

    return Sampling(max_new_tokens=settings.max_new_tokens, min_new_tokens=settings.min_new_tokens,
                    temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                    repetition_penalty=settings.repetition_penalty)


def _batched_pieces(chat: ChatModel, batcher, ids: list[int], settings: GenerationSettings,
                    usage: ReplyUsage) -> Iterator[str]:
    stop_ids = _stop_ids(chat)
    request = batcher.submit(ids, _sampling(settings), stop_ids)
    from tuner.batching import END

    try:
        yield from _detokenized(chat, request.tokens, END, set(stop_ids), usage)
    finally:
        request.cancel()  # the batch drops it at the next step when it is still decoding


def _generation_kwargs(chat: ChatModel, settings: GenerationSettings) -> dict:
    sampling = settings.temperature > 0
    kwargs = dict(max_new_tokens=settings.max_new_tokens, do_sample=sampling, min_new_tokens=settings.min_new_tokens,
                  repetition_penalty=settings.repetition_penalty, eos_token_id=_stop_ids(chat),
                  pad_token_id=chat.tokenizer.pad_token_id or chat.tokenizer.eos_token_id)
    if sampling:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k)
    return kwargs


def _generate_pieces(chat: ChatModel, ids: list[int], settings: GenerationSettings,
                     usage: ReplyUsage) -> Iterator[str]:
    """The reply so far, growing, from ``generate`` with a streamer (the path for every model)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    cancelled = threading.Event()

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), cancelled.is_set(), dtype=torch.bool, device=input_ids.device)

    input_ids = torch.tensor([ids], dtype=torch.long, device=chat.model.device)
    streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    kwargs = dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), streamer=streamer,
                  stopping_criteria=StoppingCriteriaList([Cancelled()]), **_generation_kwargs(chat, settings))
    errors: list[BaseException] = []
    generated: list[int] = []

    def generate() -> None:
        try:
            with chat.lock, torch.inference_mode():
                output = chat.model.generate(**kwargs)
                generated.append(output.shape[-1] - input_ids.shape[-1])
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
        cancelled.set()
        thread.join()
    if errors:
        raise errors[0]
    usage.completion_tokens = generated[0] if generated else 0
    usage.finish_reason = usage.finish_reason or ("length" if usage.completion_tokens >= settings.max_new_tokens
                                                  else "stop")


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


def _fast_pieces(chat: ChatModel, prompt_ids: list[int], settings: GenerationSettings,
                 usage: ReplyUsage) -> Iterator[str]:
    """The reply so far, growing, from the static-cache decoder (tuner/decode.py), run in a thread so a
    slow consumer does not hold the GPU back."""
    stop_ids = _stop_ids(chat)
    tokens: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def produce() -> None:
        try:
            decoding = chat.decoder.decode(prompt_ids, _sampling(settings), stop_ids, cancelled)
            while True:  # the model's lock token by token: a batch of other replies steps in between
                with chat.lock:
                    token = next(decoding, _END)
                if token is _END:
                    break
                tokens.put(token)
        except BaseException as error:  # noqa: BLE001 - re-raised in the caller's thread
            tokens.put(error)
        tokens.put(_END)

    thread = threading.Thread(target=produce, daemon=True)
    try:
        thread.start()
        yield from _detokenized(chat, tokens, _END, set(stop_ids), usage)
    finally:
        cancelled.set()
        if thread.ident is not None:
            thread.join()
        _give_back_decoder(chat)


def _detokenized(chat: ChatModel, tokens: queue.Queue, end: object, stop_ids: set[int],
                 usage: ReplyUsage) -> Iterator[str]:
    """The text of the token ids arriving on ``tokens`` (until ``end``; an exception there is raised), yielded
    as soon as it decodes to whole characters (``generate``'s streamer waits for the end of each word)."""
    ids: list[int] = []
    shown = ""
    finished = False
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
            else:
                usage.completion_tokens += 1
                if item in stop_ids:
                    usage.finish_reason = "stop"
                else:
                    ids.append(item)
        text = chat.tokenizer.decode(ids, skip_special_tokens=True)
        if text.endswith("\ufffd") and not finished:
            continue  # a character cut in the middle of its bytes: wait for the rest
        if text != shown or finished:
            shown = text
            yield text
    usage.finish_reason = usage.finish_reason or "length"


def reply(chat: ChatModel, message: str, history: list[tuple[str, str]] | None = None,
          system: str | None = None, settings: GenerationSettings | None = None) -> str:
    text = ""
    for text in stream_reply(chat, message, history, system, settings):
        pass
    return text


from tuner.model_cache import ChatModelCache, shared_cache  # noqa: E402,F401 - bounded by memory; here for the UI
