"""Continuous batching in a static KV cache whose decode step is replayed as a CUDA graph (the GPU path).

``tuner.batching.Batcher`` keeps the batch in a ``DynamicCache`` that grows by concatenation and runs every
step eagerly: on a GPU the step then waits on Python and kernel launches (H100, the embedded model: 39 tokens/s
for four replies batched against 283 for one reply in a CUDA graph). Here every reply owns a *slot*: row ``s``
of a static cache of ``(slots, heads, length, head_dim)`` per layer, with its tokens at positions ``0..n-1`` of
that row, so no row is padded and nothing is ever copied to join or leave. One decode step runs the first
``S`` slots (``S`` a power of two above the highest slot in use) over the first ``L`` positions (a power of two
above the longest reply): each row writes its token's keys and values at its own position (a scatter), and
attends to positions ``0..its own`` through a 4-D mask computed inside the step. That step has fixed shapes for
each ``(S, L)``, so on CUDA it is captured once as a graph and replayed: a step costs one launch whatever the
batch. A new reply is prefilled alone into its free slot (the model's own static-cache path) between two steps.

Each captured graph is checked against the same step run eagerly on its first use; a mismatch turns graphs off
for this model (the steps go on eagerly). Greedy output of a request equals its output alone up to the
rounding of the larger matrix products (tests/integration/test_slot_batching.py compares token ids on CPU).
"""

from __future__ import annotations

import logging
import time

from tuner.batching import Batcher, Request, _Row
from tuner.decode import (MIN_BUCKET, SLOT_WARM_LENGTH, CacheGeometry, DecodeUnsupported, Sampling, capture_graph,
                          check_same_logits, choose_next)

log = logging.getLogger(__name__)
MIN_SLOTS = 1
PREFILL_STEP = 64  # prompts are left padded to a multiple of this in a prefill


def _power_of_two(value: int, least: int) -> int:
    size = least
    while size < value:
        size *= 2
    return size


def supports_slots(model) -> bool:
    """Whether ``model`` (or the model under a PEFT wrapper) has a static KV cache and SDPA or eager attention:
    what the slot step (its own cache update, a 4-D attention mask) needs."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    attention = getattr(base.config, "_attn_implementation", "eager")
    return bool(getattr(type(base), "_supports_static_cache", False)) and attention in ("sdpa", "eager")


_SLOT_CACHE = None


def _slot_cache(static_cache_class, keys: list, values: list, positions, length: int, dtype):
    """A StaticCache whose update writes each row's one new key and value at that row's own position."""
    global _SLOT_CACHE
    if _SLOT_CACHE is None or not issubclass(_SLOT_CACHE, static_cache_class):

        class SlotCache(static_cache_class):
            def __init__(self, keys, values, positions, length, dtype):  # StaticCache.__init__ would allocate
                super(static_cache_class, self).__init__()
                self.max_cache_len = length
                self.max_batch_size = keys[0].shape[0]
                self.dtype = dtype
                self.key_cache = keys
                self.value_cache = values
                rows, heads, _, dim = keys[0].shape
                self._index = positions.view(rows, 1, 1, 1).expand(rows, heads, 1, dim)

            def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
                keys, values = self.key_cache[layer_idx], self.value_cache[layer_idx]
                keys.scatter_(2, self._index, key_states.to(keys.dtype))
                values.scatter_(2, self._index, value_states.to(values.dtype))
                return keys, values

            def get_seq_length(self, layer_idx=0):
                return 0

        _SLOT_CACHE = SlotCache
    return _SLOT_CACHE(keys, values, positions, length, dtype)


_PREFILL_CACHE = None


def _prefill_cache(static_cache_class, keys: list, values: list, slots, targets, width: int, dtype):
    """A StaticCache for prefilling left-padded prompts: each layer's keys and values are written into their rows'
    slots (column ``c`` of row ``j`` at position ``targets[j, c]``) and the prompt attends to its own keys only."""
    global _PREFILL_CACHE
    if _PREFILL_CACHE is None or not issubclass(_PREFILL_CACHE, static_cache_class):

        class PrefillCache(static_cache_class):
            def __init__(self, keys, values, slots, targets, width, dtype):
                super(static_cache_class, self).__init__()
                self.max_cache_len = width
                self.max_batch_size = targets.shape[0]
                self.dtype = dtype
                self.key_cache = keys
                self.value_cache = values
                self._slots = slots.view(-1, 1)
                self._targets = targets

            def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
                for buffer, states in ((self.key_cache[layer_idx], key_states),
                                       (self.value_cache[layer_idx], value_states)):
                    buffer[self._slots, :, self._targets] = states.transpose(1, 2).to(buffer.dtype)
                return key_states, value_states

            def get_seq_length(self, layer_idx=0):
                return 0

        _PREFILL_CACHE = PrefillCache
    return _PREFILL_CACHE(keys, values, slots, targets, width, dtype)


class SlotBatcher(Batcher):
    """Decodes the concurrent requests for one model together, each in its own slot of a static cache.

    ``graphs``: replay each step shape as a CUDA graph (CUDA only); without, the same steps run eagerly (what
    the CPU tests check). ``memory_fraction``: the share of the free device memory the cache may grow into."""

    def __init__(self, model, lock=None, graphs: bool = True, max_batch: int = 32, max_context: int = 8192,
                 memory_fraction: float = 0.5, idle_seconds: float = 10.0, join_wait: float = 0.03):
        import torch
        from transformers.cache_utils import StaticCache

        super().__init__(model, lock, max_batch=max_batch, idle_seconds=idle_seconds)
        if not supports_slots(self.model):
            raise DecodeUnsupported(f"{type(self.model).__name__} cannot decode in slots")
        geometry = CacheGeometry.of(self.model, max_context)
        self.dtype, self.limit = geometry.dtype, geometry.limit
        self.heads, self.head_dim, self.layers = geometry.heads, geometry.head_dim, geometry.layers
        self.graphs = bool(graphs and self.device.type == "cuda")
        self.memory_fraction = memory_fraction
        self._static_cache = StaticCache
        self._keys: list = []
        self._values: list = []
        self.slots = 0  # rows of the cache buffers
        self.length = 0  # positions of the cache buffers
        self._graphs: dict[tuple[int, int], tuple] = {}
        self._checked: set[tuple[int, int]] = set()
        self._pool = None
        self._ids = self._positions = None
        self.capture_seconds = 0.0
        self.join_wait = join_wait
        self.join_group = 4
        self._inflight = None  # (rows, tokens, event) of the step launched last, not read back yet
        self._indexes: dict[tuple[int, ...], tuple] = {}  # the rows' slots on the device, and ones like them
        self.prefills = 0  # prefill forwards, and the prompts they carried
        self.prefilled = 0

    # ------------------------------------------------------------------------------------- public
    def fits(self, tokens: int) -> bool:
        """Whether a request of ``tokens`` (prompt + new tokens + 1) fits this model's context."""
        return tokens <= self.limit

    def slot_bytes(self, length: int) -> int:
        import torch

        return 2 * self.layers * self.heads * self.head_dim * length * torch.tensor([], dtype=self.dtype).element_size()

    # ------------------------------------------------------------------------------------- buffers
    def _allowed_bytes(self) -> int:
        import torch

        held = self.slots * self.slot_bytes(self.length)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        else:
            try:
                import psutil

                free = psutil.virtual_memory().available
            except ImportError:
                free = 8 << 30
        return held + int(self.memory_fraction * free)

    def _grow(self, slots: int, length: int) -> bool:
        """Make the buffers at least ``slots`` x ``length`` (powers of two), keeping what they hold; False when
        that would not fit in memory."""
        import torch

        slots = max(self.slots, _power_of_two(slots, MIN_SLOTS))
        length = max(self.length, min(_power_of_two(length, MIN_BUCKET), self.limit))
        if slots <= self.slots and length <= self.length:
            return True
        if slots * self.slot_bytes(length) > self._allowed_bytes():
            return False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # a launched step may still be replaying a graph dropped here
        shape = (slots, self.heads, length, self.head_dim)
        old = (self._keys, self._values)
        self._graphs.clear()  # they point into the old buffers
        self._checked.clear()
        self._pool = None  # freed with its graphs: capturing into it again trips the allocator
        self._keys = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        self._values = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(self.layers)]
        if self.slots:
            for new, before in zip(self._keys + self._values, old[0] + old[1]):
                new[:self.slots, :, :self.length].copy_(before)
        ids = torch.zeros((slots, 1), dtype=torch.long, device=self.device)
        positions = torch.zeros((slots,), dtype=torch.long, device=self.device)
        if self.slots:
            ids[:self.slots].copy_(self._ids)
            positions[:self.slots].copy_(self._positions)
        self._ids, self._positions = ids, positions
        self._arange = torch.arange(length, device=self.device)
        self.slots, self.length = slots, length
        del old
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return True

    # ------------------------------------------------------------------------------------- joining
    def _take_joiners(self) -> list[Request]:
        """The requests to prefill now. While a batch is decoding, a few newcomers wait up to ``join_wait`` seconds
        for others: a prefill is one eager forward (about 80 ms for a 7B model on the H100 machine, whatever the
        number of prompts), during which the batch makes no step."""
        if (self._rows and self._waiting and len(self._waiting) < self.join_group
                and time.monotonic() - self._waiting[0].arrived < self.join_wait):
            return []
        room = self.max_batch - len(self._rows)
        joining = []
        while self._waiting and len(joining) < room:
            joining.append(self._waiting.popleft())
        return joining

    def _admit(self, joining: list[Request]) -> None:
        """Give each new request a free slot (growing the buffers when it needs), prefill them together (left
        padded, up to ``prefill_tokens`` padded tokens a forward), choose their first tokens."""
        admitted: list[tuple[Request, int]] = []
        used = {row.slot for row in self._rows}
        for position, request in enumerate(joining):
            if request.cancelled.is_set():
                self._finish(request, "cancelled")
                continue
            if request.sampling.max_new_tokens <= 0:
                self._finish(request, "length")
                continue
            needed = len(request.prompt_ids) + request.sampling.max_new_tokens + 1
            if not self.fits(needed):
                request.tokens.put(DecodeUnsupported(f"{needed} tokens is over this model's {self.limit}"))
                self._finish(request, "error")
                continue
            slot = next(index for index in range(self.max_batch) if index not in used)
            if not self._grow(slot + 1, needed):
                if self._rows or admitted:  # wait until replies leave and free memory
                    with self._cond:
                        self._waiting.extendleft(reversed(joining[position:]))
                    break
                request.tokens.put(MemoryError("not enough memory for this reply's key-value cache"))
                self._finish(request, "error")
                continue
            used.add(slot)
            admitted.append((request, slot))
        group: list[tuple[Request, int]] = []
        for request, slot in sorted(admitted, key=lambda item: len(item[0].prompt_ids)):
            width = max(len(request.prompt_ids), *(len(r.prompt_ids) for r, _ in group)) if group else 0
            if group and width * (len(group) + 1) > self.prefill_tokens:
                self._prefill(group)
                group = []
            group.append((request, slot))
        if group:
            self._prefill(group)

    def _prefill(self, group: list[tuple[Request, int]]) -> None:
        """One forward for the prompts of ``group`` (left padded), written into their slots at positions 0..n-1."""
        import torch

        # widths in steps of PREFILL_STEP: on the H100 machine the first prefill of a new width cost up to 1.8 s
        # (13 and 30 tokens; per-shape set-up in the kernels' libraries), the next ones 0.05 s
        longest = max(len(request.prompt_ids) for request, _ in group)
        width = min(-(-longest // PREFILL_STEP) * PREFILL_STEP, self.length - 1)
        ids = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for index, (request, _) in enumerate(group):
            ids[index, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[index, width - len(request.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = mask.cumsum(-1) - 1
        # a padding column goes to the slot's last position: no reply reads it before writing it there
        targets = torch.where(positions >= 0, positions, self.length - 1)
        slots = torch.tensor([slot for _, slot in group], dtype=torch.long, device=self.device)
        cache = _prefill_cache(self._static_cache, self._keys, self._values, slots, targets, width, self.dtype)
        kwargs = {self._keep: 1} if self._keep else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions.clamp_min(0),
                         cache_position=torch.arange(width, device=self.device), past_key_values=cache,
                         use_cache=True, return_dict=True, **kwargs)
        self.prefills += 1
        self.prefilled += len(group)
        rows = []
        for request, slot in group:
            row = self._new_row(request)
            row.slot = slot
            rows.append(row)
        chosen = self._choose(rows, out.logits[:, -1, :].float())
        self._ids.view(-1).index_copy_(0, slots, chosen)
        self._positions.index_copy_(0, slots, mask.sum(-1))
        self._rows.extend(rows)
        self._read(rows, *self._to_host(chosen))

    def warm_up(self, length: int = SLOT_WARM_LENGTH) -> str:
        """Capture (and check) the step for every batch size up to ``max_batch`` (as far as memory allows) at
        ``length`` positions, and run the prefill path once, now: visitors arriving together then wait for no
        capture and no lazy set-up. Returns what was done."""
        import torch

        started = time.perf_counter()
        slots = self.max_batch
        while slots > 1 and not self._grow(slots, length):
            slots //= 2
        size = 1
        with self.lock, torch.inference_mode():
            self._positions.zero_()
            self._ids.zero_()
            # every length a step can take with these buffers (``_step_length``): a batch of short replies may step
            # over fewer positions than they hold; a capture missing here is made while visitors wait (20 sessions:
            # 371 tokens/s instead of 705 once)
            widths = sorted({self._step_length(1 << bits) for bits in range(self.length.bit_length())})
            while self.graphs and size <= min(slots, self.slots):
                for positions in widths:
                    self._run_step((size, positions))
                size *= 2
            # the prefill path's first forward of each width pays for set-up (H100, 7B-shaped: 1.2-1.8 s of first
            # token otherwise): the widths of most chat turns
            vocab = int(getattr(self.model.config, "vocab_size", 2) or 2)
            for width in (PREFILL_STEP, 2 * PREFILL_STEP, 3 * PREFILL_STEP):
                dummy = Request([(7 * i + 3) % vocab for i in range(width)], Sampling(max_new_tokens=1))
                with self._cond:
                    self._unfinished += 1  # as submit counts it: finishing it counts it down
                self._prefill([(dummy, 0)])
        seconds = time.perf_counter() - started
        if not self.graphs:
            return f"batched steps run eagerly (ready in {seconds:.1f} s)"
        return f"batches up to {size // 2} in CUDA graphs (ready in {seconds:.1f} s)"

    # ------------------------------------------------------------------------------------- steps
    def _shape(self) -> tuple[int, int]:
        slots = _power_of_two(max(row.slot for row in self._rows) + 1, MIN_SLOTS)
        return slots, self._step_length(max(row.length for row in self._rows) + 1)

    def _step_length(self, positions: int) -> int:
        """The positions a step attends over for rows of up to ``positions`` tokens: a power of two, or all the
        buffers hold. Fewer than they hold is a strided view of them, and attention copies a strided view whole,
        keys and values, in every layer (bench/slot_buffers.py, H100, 7B-shaped, 32 slots: 256 of 512 positions
        13.3 ms a step, all 512 9.3); up to four times the positions, reading them all costs less."""
        length = min(_power_of_two(positions, MIN_BUCKET), self.length)
        return self.length if self.length <= 4 * length else length

    def _forward_step(self, slots: int, length: int):
        import torch

        # a free slot's position is stale or 0: clamped, it writes inside its own row and nobody reads it
        positions = self._positions[:slots].clamp(max=length - 1)
        allowed = self._arange[:length].view(1, 1, 1, length) <= positions.view(slots, 1, 1, 1)
        mask = torch.full(allowed.shape, torch.finfo(self.dtype).min, dtype=self.dtype,
                          device=self.device).masked_fill(allowed, 0.0)
        cache = _slot_cache(self._static_cache, [k[:slots, :, :length] for k in self._keys],
                            [v[:slots, :, :length] for v in self._values], positions, length, self.dtype)
        kwargs = {self._keep: 1} if self._keep else {}
        out = self.model(input_ids=self._ids[:slots], attention_mask=mask, position_ids=positions.view(slots, 1),
                         cache_position=positions[:1], past_key_values=cache, use_cache=True, return_dict=True,
                         **kwargs)
        return out.logits[:, -1, :].float()

    def _capture(self, shape: tuple[int, int]):
        import torch

        started = time.perf_counter()
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        self._graphs[shape] = capture_graph(lambda: self._forward_step(*shape), self.device, self._pool)
        self.capture_seconds += time.perf_counter() - started

    def _run_step(self, shape: tuple[int, int]):
        """The logits of one step of the first ``shape[0]`` slots (a graph replay where graphs are on)."""
        if not self.graphs:
            return self._forward_step(*shape)
        try:
            if shape not in self._graphs:
                self._capture(shape)
            graph, logits = self._graphs[shape]
            if shape in self._checked:
                graph.replay()
                return logits
            eager = self._forward_step(*shape).clone()  # writes the same cache entries as the replay
            graph.replay()
            check_same_logits(logits, eager)
            self._checked.add(shape)
            return logits
        except Exception as error:  # noqa: BLE001 - the steps go on eagerly
            log.warning("CUDA graphs off for batched decoding: %s", error)
            self.graphs = False
            self._graphs.clear()
            self._pool = None
            return self._forward_step(*shape)

    def _step(self) -> None:
        """Launch the next step of every row that still needs a token, then read back the step launched before:
        the GPU computes one step while the host hands out the tokens of the previous one. A row that finished in
        that read was part of the new step too; its token there is dropped."""
        launch = [row for row in self._rows if row.launched < row.request.sampling.max_new_tokens]
        following = self._launch(launch) if launch else None
        if self._inflight is not None:
            self._read(*self._inflight)
        self._inflight = following

    def _launch(self, rows: list[_Row]):
        """Run one step on the device-side inputs and choose each row's next token there (no host sync), written
        back as the next step's input; returns what ``_read`` needs."""
        import torch

        logits = self._run_step(self._shape())
        self.steps += 1
        self.rows_stepped += len(rows)
        index, ones = self._slot_index(tuple(row.slot for row in rows))
        chosen = self._choose(rows, logits.index_select(0, index))
        self._ids.view(-1).index_copy_(0, index, chosen)
        self._positions.index_add_(0, index, ones)
        for row in rows:
            row.length += 1
        return rows, *self._to_host(chosen)

    def _slot_index(self, slots: tuple[int, ...]):
        """``slots`` as a device tensor, made once for each set of rows. A copy from pageable host memory every step
        may make the host wait for the work queued before it (the CUDA driver's staging), here the step just
        launched, and the host's work then no longer overlaps the GPU's (H100, 7B-shaped, bf16: one reply at 141
        tokens/s where its step's graph replays at 155-161)."""
        import torch

        if slots not in self._indexes:
            if len(self._indexes) >= 256:
                self._indexes.clear()
            index = torch.tensor(slots, dtype=torch.long, device=self.device)
            self._indexes[slots] = (index, torch.ones_like(index))
        return self._indexes[slots]

    def _to_host(self, chosen):
        import torch

        if self.device.type != "cuda":
            return chosen, None
        host = torch.empty(chosen.shape, dtype=chosen.dtype, pin_memory=True)
        host.copy_(chosen, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return host, event

    def _choose(self, rows: list[_Row], logits):
        """Each row's next token with its own settings, on the device (``choose_next``: generate's order)."""
        import torch

        chosen = torch.argmax(logits, dim=-1)
        for index, row in enumerate(rows):
            sampling, step = row.request.sampling, row.launched
            count = len(row.request.prompt_ids) + step
            plain = sampling.temperature <= 0 and sampling.repetition_penalty == 1.0 and (
                row.stop_tensor is None or step >= sampling.min_new_tokens)
            if not plain:
                chosen[index] = choose_next(logits[index:index + 1], row.seen, count, step, sampling,
                                            row.stop_tensor)[0, 0]
            if row.seen is not None:
                row.seen[0, count] = chosen[index]
            row.launched += 1
        return chosen

    def _read(self, rows: list[_Row], host, event) -> None:
        """Hand each row its token of a launched step; rows that finished or left since get nothing."""
        if event is not None:
            event.synchronize()
        done = [row for row, token in zip(rows, host.tolist())
                if row.request.finish_reason is None and self._hand_out(row, token)]
        self._leave(done, None)

    def _leave(self, rows: list[_Row], reason: str | None) -> None:
        """Take ``rows`` out of the batch (``reason``: finish their requests with it); their slots are free, and
        read position 0 from the next step on (a launched step has read the old position already)."""
        import torch

        if not rows:
            return
        if reason is not None:
            for row in rows:
                self._finish(row.request, reason)
        free = torch.tensor([row.slot for row in rows], dtype=torch.long).to(self.device, non_blocking=True)
        self._positions.index_fill_(0, free, 0)
        gone = {id(row) for row in rows}
        self._rows = [row for row in self._rows if id(row) not in gone]
