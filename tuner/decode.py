"""Fast batch-1 decoding for chat: a static KV cache, and the model's one-token step replayed as a CUDA graph.

Why: transformers 4.48's ``generate`` runs every operation of every layer from Python, one token at a
time. On the H100 machine that is 9 tokens/s for a 7B model (bench/results/h100-chat-speed.txt) where
the memory bandwidth allows about 240: the GPU waits on the CPU. Here the one-token step (all layers,
the cache update, the last position's logits) is captured once as a CUDA graph per cache size, so a
token costs one graph launch; the next step is launched before the token of this one is read back, so
the host work (sampling bookkeeping, detokenizing, the consumer) overlaps the GPU.

The choice of the next token follows ``generate`` exactly for the settings the chat uses (repetition
penalty, min_new_tokens, then temperature, top-k, top-p, in that order): greedy decoding gives the same
tokens (tests/unit/test_decode.py checks it against ``generate`` on CPU). Anything else a model's
generation config asks for (bad words, n-gram blocking, ...) sends the caller back to ``generate``.
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

MIN_BUCKET = 256
# positions the batch-1 decoder and the slot batcher capture at load: a reply that stays under it never waits for a
# capture. Warmed to 256, the slot batcher captured its 512-position step in the middle of the first 256-token reply
# and grew its cache there (that reply: 126.6 tokens/s in the app against 152.6-156.6); warmed to 512, batches of
# short replies step over all 512 positions (``SlotBatcher._step_length``): H100, 7B-shaped, 20 sessions 785.7
# tokens/s (bench/gpu_levers.sh ab). TUNER_SLOT_WARM_LENGTH sets the slot batcher's.
WARM_LENGTH = 512
SLOT_WARM_LENGTH = int(os.environ.get("TUNER_SLOT_WARM_LENGTH", str(WARM_LENGTH)) or WARM_LENGTH)
DEFAULT_MAX_CONTEXT = 8192

# GenerationConfig fields that add logits processors we do not implement: the fast path is used only
# while each has its default value (the model's generation_config, with the call's settings over it).
_UNSUPPORTED = ("guidance_scale", "sequence_bias", "diversity_penalty", "encoder_repetition_penalty",
                "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "force_words_ids",
                "min_length", "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
                "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
                "forced_decoder_ids", "renormalize_logits", "watermarking_config", "num_beams",
                "num_beam_groups", "penalty_alpha", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff",
                "constraints", "assistant_model", "prompt_lookup_num_tokens", "stop_strings",
                "max_time", "low_memory", "dola_layers")


def graph_tolerance() -> float:
    """The largest relative difference between a captured step's logits and the eager step's that passes the
    check (TUNER_DECODE_TOLERANCE, default 0.02: a graph of the same kernels matches to rounding; a compiled step
    fuses operations and rounds differently)."""
    import os

    try:
        return float(os.environ.get("TUNER_DECODE_TOLERANCE", "0.02"))
    except ValueError:
        return 0.02


class DecodeUnsupported(Exception):
    """This model or these settings are not handled here: use ``generate``."""


@dataclass
class CacheGeometry:
    """What a static KV cache for ``model`` is made of: positions at most, and per layer its key/value shape."""
    limit: int
    layers: int
    heads: int  # key/value heads
    head_dim: int
    dtype: object
    device: object

    @classmethod
    def of(cls, model, max_context: int = DEFAULT_MAX_CONTEXT) -> "CacheGeometry":
        import torch

        config = model.config
        embeddings = model.get_input_embeddings().weight
        if embeddings.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise DecodeUnsupported(f"embedding dtype {embeddings.dtype}")
        return cls(limit=min(int(getattr(config, "max_position_embeddings", max_context) or max_context), max_context),
                   layers=config.num_hidden_layers,
                   heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   head_dim=getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads,
                   dtype=embeddings.dtype, device=embeddings.device)


def capture_graph(step, device, pool):
    """Run ``step`` (no arguments; returns a tensor) twice on a side stream, so lazy initialisation (cuBLAS handles,
    autotuning, compiling) stays out of the graph, then capture it into ``pool``; returns (graph, its output)."""
    import torch

    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        out = step()
    torch.cuda.synchronize(device)
    return graph, out


def check_same_logits(replayed, eager, where: str = "", what: str = "the CUDA graph's logits") -> float:
    """Raise DecodeUnsupported unless a replayed step's logits equal the eager step's to ``graph_tolerance()``
    (relative to the largest logit; NaN fails too); returns that relative difference."""
    import torch

    scale = eager.abs().max().clamp_min(1e-6)
    error = float((replayed - eager).abs().max() / scale)
    if not (error <= graph_tolerance() and bool(torch.isfinite(replayed).all())):
        raise DecodeUnsupported(f"{what} differ from the model's (relative error {error:.3g}{where})")
    return error


@dataclass
class Sampling:
    max_new_tokens: int = 256
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0


def generation_config_supported(model, overrides: dict) -> bool:
    """Whether ``generate`` with ``overrides`` would use only the processors implemented here."""
    from transformers import GenerationConfig

    current = getattr(model, "generation_config", None) or GenerationConfig()
    default = GenerationConfig()
    for name in _UNSUPPORTED:
        value = overrides.get(name, getattr(current, name, None))
        if value != getattr(default, name, None):
            return False
    return True


def choose_next(logits, seen, count: int, step: int, sampling: Sampling, stop_ids):
    """The next token, as ``generate`` picks it (processors in its order), as a (1, 1) tensor. ``logits``: (1, vocab);
    ``seen``: (1, >= count) ids so far (for the repetition penalty); ``step``: how many tokens were generated before."""
    import torch

    scores = logits
    if sampling.repetition_penalty != 1.0:
        tokens = seen[:, :count]
        score = torch.gather(scores, 1, tokens)
        score = torch.where(score < 0, score * sampling.repetition_penalty, score / sampling.repetition_penalty)
        scores = scores.scatter(1, tokens, score)
    if step < sampling.min_new_tokens and stop_ids is not None:
        # index_fill, not scores[:, stop_ids] = -inf: that assignment waited for the GPU (a lone reply in the slot
        # batcher with min_new_tokens: 144 tokens/s against 154 without)
        scores = scores.index_fill(1, stop_ids, -float("inf"))
    if sampling.temperature <= 0:
        return torch.argmax(scores, dim=-1, keepdim=True)
    if sampling.temperature != 1.0:
        scores = scores / sampling.temperature
    if sampling.top_k:
        top_k = min(sampling.top_k, scores.size(-1))
        threshold = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < threshold, -float("inf"))
    if sampling.top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(scores, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - sampling.top_p)
        remove[..., -1:] = 0
        remove = remove.scatter(1, sorted_indices, remove)
        scores = scores.masked_fill(remove, -float("inf"))
    probs = torch.nn.functional.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1)


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class StaticDecoder:
    """Decodes one sequence at a time for ``model`` (a transformers causal LM, or a PEFT model on one).

    ``graphs``: capture the one-token step as CUDA graphs (CUDA only); without, the same loop runs eagerly
    (the CPU path, and what the tests compare with ``generate``).
    """

    def __init__(self, model, graphs: bool, max_context: int = DEFAULT_MAX_CONTEXT, compile: bool = False):
        import torch
        from transformers.cache_utils import StaticCache

        self.base = _base_model(model)
        if not getattr(type(self.base), "_supports_static_cache", False):
            raise DecodeUnsupported(f"{type(self.base).__name__} has no static KV cache in this transformers")
        self.config = self.base.config
        geometry = CacheGeometry.of(self.base, max_context)
        self.device, self.dtype, self.limit = geometry.device, geometry.dtype, geometry.limit
        self.heads, self.head_dim, self.layers = geometry.heads, geometry.head_dim, geometry.layers
        self.graphs = bool(graphs and self.device.type == "cuda")
        parameters = inspect.signature(type(self.base).forward).parameters
        self.keep = "num_logits_to_keep" if "num_logits_to_keep" in parameters else (
            "logits_to_keep" if "logits_to_keep" in parameters else None)
        self._static_cache = StaticCache
        self.capacity = 0
        self._keys: list = []
        self._values: list = []
        self._graphs: dict[int, tuple] = {}
        self._pool = None
        self.lock = threading.Lock()
        # Static inputs of the captured step: the token, and its position (cache position = position id).
        self._ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        self._position = torch.zeros((1,), dtype=torch.long, device=self.device)
        self.capture_seconds = 0.0
        # compile: torch.compile the one-token step before it is captured (Inductor fuses the norms, rotary
        # embedding, activations and residual adds of every layer: fewer, larger kernels in the graph). Each cache
        # size compiles once, when its graph is captured (a minute or more for a 7B model).
        self.compiled = bool(compile and self.graphs)
        self._step_forward = torch.compile(self._forward, dynamic=False) if self.compiled else self._forward

    # ------------------------------------------------------------------------------------- cache
    def bucket(self, length: int) -> int:
        if length > self.limit:
            raise DecodeUnsupported(f"{length} tokens is over this decoder's {self.limit}")
        size = MIN_BUCKET
        while size < length:
            size *= 2
        return min(size, self.limit)

    def _ensure_capacity(self, size: int) -> None:
        import torch

        if size <= self.capacity:
            return
        self._graphs.clear()  # they point into the old buffers
        self._keys = self._values = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = (1, self.heads, size, self.head_dim)
        self._keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self._values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self.capacity = size
        self._pool = None

    def _cache(self, size: int):
        """A StaticCache of ``size`` positions whose tensors are views of the shared buffers."""
        self._ensure_capacity(size)
        cache = _view_cache(self._static_cache, [k[:, :, :size] for k in self._keys],
                            [v[:, :, :size] for v in self._values], size, self.dtype)
        return cache

    # ------------------------------------------------------------------------------------- steps
    def _forward(self, ids, positions, cache):
        kwargs = {self.keep: 1} if self.keep else {}
        out = self.base(input_ids=ids, position_ids=positions.view(1, -1), cache_position=positions,
                        past_key_values=cache, use_cache=True, return_dict=True, **kwargs)
        return out.logits[:, -1, :].float()

    def _step_fn(self, size: int):
        """A function that runs the one-token step on the static inputs and returns the logits tensor."""
        import torch

        if size in self._graphs:
            graph, logits = self._graphs[size]

            def replay():
                graph.replay()
                return logits
            return replay
        cache = self._cache(size)
        if not self.graphs:
            return lambda: self._forward(self._ids, self._position, cache)
        started = time.perf_counter()
        self._position.fill_(0)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        self._graphs[size] = capture_graph(lambda: self._step_forward(self._ids, self._position, cache),
                                           self.device, self._pool)
        self.capture_seconds += time.perf_counter() - started
        return self._step_fn(size)

    def warm_up(self, length: int = WARM_LENGTH) -> float:
        """Capture the step for sequences up to ``length`` tokens now, and check it (``self_check``);
        returns the seconds it took."""
        started = time.perf_counter()
        self.prepare(min(length, self.limit))
        return time.perf_counter() - started

    def prepare(self, length: int) -> None:
        """Make sure the step for ``length`` tokens is captured and checked (a new cache size captures
        a new graph): raises here, before any token, rather than in the middle of a reply."""
        import torch

        size = self.bucket(length)
        if size in self._graphs or not self.graphs:
            return
        with self.lock, torch.no_grad():
            self._step_fn(size)
        self.self_check(size)

    def self_check(self, length: int, steps: int = 4) -> None:
        """Replay the captured step against the same step run eagerly, on the same inputs, for a few
        positions: a graph that does not compute what the model computes raises DecodeUnsupported."""
        import torch

        size = self.bucket(length)
        vocab = int(getattr(self.config, "vocab_size", 2) or 2)
        prompt = [(7 * i + 3) % vocab for i in range(8)]
        with self.lock, torch.no_grad():
            step, cache = self._step_fn(size), self._cache(size)
            positions = torch.arange(len(prompt), dtype=torch.long, device=self.device)
            logits = self._forward(torch.tensor([prompt], device=self.device), positions, cache)
            for index in range(steps):
                token = torch.argmax(logits, dim=-1, keepdim=True)
                self._ids.copy_(token)
                self._position.fill_(len(prompt) + index)
                eager = self._forward(self._ids, self._position, cache).clone()  # writes the same cache entry
                logits = step().clone()
                try:
                    check_same_logits(logits, eager, f" at step {index}")
                except DecodeUnsupported:
                    self._graphs.clear()
                    raise

    # ------------------------------------------------------------------------------------- choice
    def _choose(self, logits, seen, count: int, step: int, sampling: Sampling, stop_ids):
        return choose_next(logits, seen, count, step, sampling, stop_ids)

    # ------------------------------------------------------------------------------------- decode
    def decode(self, prompt_ids: Sequence[int], sampling: Sampling, stop_ids: Sequence[int] = (),
               cancelled: threading.Event | None = None) -> Iterator[int]:
        """Yield new token ids one by one; stops after a stop id (yielded too), at max_new_tokens, or
        when ``cancelled`` is set. Raises DecodeUnsupported before any token if the length does not fit."""
        import torch

        prompt_ids = list(prompt_ids)
        n, new = len(prompt_ids), max(0, int(sampling.max_new_tokens))
        if n == 0:
            raise DecodeUnsupported("empty prompt")
        if new == 0:
            return
        size = self.bucket(n + new + 1)
        stops = set(stop_ids)
        stop_tensor = torch.tensor(sorted(stops), dtype=torch.long, device=self.device) if stops else None
        with self.lock, torch.no_grad():
            step = self._step_fn(size)
            cache = self._cache(size)
            seen = torch.zeros((1, n + new + 1), dtype=torch.long, device=self.device)
            seen[0, :n] = torch.tensor(prompt_ids, dtype=torch.long)
            prefill = torch.arange(n, dtype=torch.long, device=self.device)
            logits = self._forward(seen[:, :n], prefill, cache)
            token = self._choose(logits, seen, n, 0, sampling, stop_tensor)
            pinned = self.device.type == "cuda"
            host = torch.zeros((1, 1), dtype=torch.long, pin_memory=pinned)
            done = torch.cuda.Event() if pinned else None
            for index in range(new):
                host.copy_(token, non_blocking=pinned)
                if pinned:
                    done.record()
                if index + 1 < new:  # launch the next step before this token is read back
                    seen[:, n + index:n + index + 1] = token
                    self._ids.copy_(token)
                    self._position.fill_(n + index)
                    logits = step()
                    following = self._choose(logits, seen, n + index + 1, index + 1, sampling, stop_tensor)
                if pinned:
                    done.synchronize()
                value = int(host[0, 0])
                yield value
                if value in stops or (cancelled is not None and cancelled.is_set()) or index + 1 >= new:
                    break
                token = following


_VIEW_CACHE = None


def _view_cache(static_cache_class, keys: list, values: list, size: int, dtype):
    """A StaticCache over given tensors (transformers' own allocates its tensors itself)."""
    global _VIEW_CACHE
    if _VIEW_CACHE is None or not issubclass(_VIEW_CACHE, static_cache_class):

        class ViewCache(static_cache_class):
            def __init__(self, keys, values, size, dtype):  # not StaticCache.__init__: it would allocate
                super(static_cache_class, self).__init__()
                self.max_cache_len = size
                self.max_batch_size = 1
                self.dtype = dtype
                self.key_cache = keys
                self.value_cache = values

            def get_seq_length(self, layer_idx=0):
                return 0  # read only on the paths of other caches; saves a reduction in every step

        _VIEW_CACHE = ViewCache
    return _VIEW_CACHE(keys, values, size, dtype)
