"""Continuous batching: the replies that one loaded model is writing at the same time are decoded together.

One scheduler thread per model keeps a batch of active sequences whose keys and values sit in one
``DynamicCache``, left padded: row ``i`` holds ``mask[i].sum()`` real positions at the right end. Each step
runs one forward for every row (its last token, at its own position id, behind its own attention mask),
then picks each row's next token with that request's own settings (``tuner.decode.choose_next``, the
order of ``generate``'s processors) and hands it to the request's queue. New requests are prefilled
together (left padded) between two steps and join the batch; rows that finish or whose reader went away
leave it, and the padding columns no row needs any more are cut off.

Greedy output equals the request's output alone up to floating-point rounding of the larger matrix
products (tests/integration/test_batching.py compares token ids on the embedded model).
"""

from __future__ import annotations

import atexit
import inspect
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from tuner.decode import Sampling, choose_next

END = object()  # put on a request's queue after its last token (or after the exception that ended it)
_BATCHERS: "weakref.WeakSet[Batcher]" = weakref.WeakSet()


class Request:
    """One reply being decoded. Its token ids arrive on ``tokens``, then ``END`` (an exception before ``END``
    if the decoding failed). ``cancel()`` (the reader went away) makes it leave the batch at the next step."""

    def __init__(self, prompt_ids: Sequence[int], sampling: Sampling, stop_ids: Sequence[int] = ()):
        self.prompt_ids = list(prompt_ids)
        self.sampling = sampling
        self.stop_ids = frozenset(stop_ids)
        self.tokens: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.finish_reason: str | None = None  # stop | length | cancelled | error
        self.arrived = time.monotonic()

    def cancel(self) -> None:
        self.cancelled.set()


@dataclass
class _Row:
    request: Request
    length: int  # real tokens in the cache: the position id of the next token
    last: int = 0  # the token chosen last, not yet in the cache
    generated: int = 0
    seen: object = None  # (1, prompt + max_new) ids for the repetition penalty, when it is on
    stop_tensor: object = None
    slot: int = 0  # its row of the static cache (tuner/slot_batching.py)
    launched: int = 0  # tokens chosen on the device, read back or not (tuner/slot_batching.py)


def supports_batching(model) -> bool:
    """Whether ``model`` (a transformers causal LM, or a PEFT model on one) takes a ``Cache`` object, an
    attention mask and position ids in one forward: what left-padded batching needs."""
    base = _base_model(model)
    return bool(getattr(type(base), "_supports_cache_class", False))


def _base_model(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class Batcher:
    """Decodes the concurrent requests for one model together. ``lock``: held around each forward, so
    other users of the model (``generate``, the static-cache decoder) never run at the same time.

    ``max_batch``: rows decoded at once (more wait); ``prefill_tokens``: padded prompt tokens prefilled in
    one forward between two steps (a longer prompt is prefilled alone); ``idle_seconds``: how long the
    scheduler thread waits for work before it ends (a new request starts it again)."""

    def __init__(self, model, lock: threading.Lock | None = None, max_batch: int = 32,
                 prefill_tokens: int = 4096, idle_seconds: float = 10.0):
        self.model = _base_model(model)
        self.lock = lock or threading.Lock()
        self.max_batch = max_batch
        self.prefill_tokens = prefill_tokens
        self.idle_seconds = idle_seconds
        self.device = self.model.get_input_embeddings().weight.device
        parameters = inspect.signature(type(self.model).forward).parameters
        self._keep = next((name for name in ("num_logits_to_keep", "logits_to_keep") if name in parameters), None)
        self._waiting: deque[Request] = deque()
        self._unfinished = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stopping = False
        _BATCHERS.add(self)
        self._rows: list[_Row] = []
        self._cache = None
        self._mask = None  # (rows, columns) long: 1 where the cache holds a real position
        self.steps = 0  # decode steps run, and the rows they carried: the mean batch size, for tests and benchmarks
        self.rows_stepped = 0

    # ------------------------------------------------------------------------------------- public
    def submit(self, prompt_ids: Sequence[int], sampling: Sampling, stop_ids: Sequence[int] = ()) -> Request:
        request = Request(prompt_ids, sampling, stop_ids)
        if not request.prompt_ids:
            raise ValueError("empty prompt")
        with self._cond:
            self._waiting.append(request)
            self._unfinished += 1
            self._closing = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tuner-batcher", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request

    def stop(self, timeout: float = 5.0) -> None:
        """End every request (as cancelled) and the scheduler thread, and wait for it: at interpreter exit a
        thread left inside torch aborts the process ("terminate called without an active exception")."""
        with self._cond:
            self._stopping = True
            thread = self._thread
            self._cond.notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def close(self) -> None:
        """Let the scheduler thread end as soon as it has no work (the model was evicted: free it now)."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    @property
    def busy(self) -> int:
        """Requests submitted and not finished yet."""
        with self._cond:
            return self._unfinished

    # ------------------------------------------------------------------------------------- scheduler
    def _run(self) -> None:
        import torch

        while True:
            with self._cond:
                if self._stopping:
                    stopped = list(self._waiting) + [row.request for row in self._rows]
                    self._waiting.clear()
                    self._rows, self._cache, self._mask = [], None, None
                    self._thread = None
                    for request in stopped:
                        self._finish_locked(request, "cancelled")
                    return
                if not self._waiting and not self._rows:
                    if not self._closing:
                        self._cond.wait(self.idle_seconds)
                    if not self._waiting and not self._rows:
                        self._thread = None
                        return
                joining = self._take_joiners()
            try:
                with self.lock, torch.inference_mode():
                    self._leave([row for row in self._rows if row.request.cancelled.is_set()], "cancelled")
                    if joining:
                        self._admit(joining)
                    if self._rows:
                        self._step()
            except BaseException as error:  # noqa: BLE001 - every reader hears of it; the scheduler goes on
                failed = [row.request for row in self._rows] + joining
                self._rows, self._cache, self._mask = [], None, None
                for request in failed:
                    if request.finish_reason is None:
                        request.tokens.put(error)
                        self._finish(request, "error")

    def _take_joiners(self) -> list[Request]:
        room = self.max_batch - len(self._rows)
        joining: list[Request] = []
        longest = 0
        while self._waiting and len(joining) < room:
            candidate = self._waiting[0]
            padded = max(longest, len(candidate.prompt_ids)) * (len(joining) + 1)
            if joining and padded > self.prefill_tokens:
                break
            joining.append(self._waiting.popleft())
            longest = max(longest, len(candidate.prompt_ids))
        return joining

    def _finish(self, request: Request, reason: str) -> None:
        with self._cond:
            self._finish_locked(request, reason)

    def _finish_locked(self, request: Request, reason: str) -> None:
        if request.finish_reason is None:
            request.finish_reason = reason
            request.tokens.put(END)
            self._unfinished -= 1

    # ------------------------------------------------------------------------------------- steps
    def _forward(self, ids, mask, positions, cache):
        kwargs = {self._keep: 1} if self._keep else {}
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                         use_cache=True, return_dict=True, **kwargs)
        return out.logits[:, -1, :].float()

    def _admit(self, joining: list[Request]) -> None:
        """Prefill the new requests together (left padded), choose their first tokens, join them to the batch."""
        import torch
        from transformers import DynamicCache

        for request in joining:
            if request.cancelled.is_set():
                self._finish(request, "cancelled")
            elif request.sampling.max_new_tokens <= 0:
                self._finish(request, "length")
        joining = [r for r in joining if r.finish_reason is None]
        if not joining:
            return
        width = max(len(r.prompt_ids) for r in joining)
        ids = torch.zeros((len(joining), width), dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for index, request in enumerate(joining):
            ids[index, width - len(request.prompt_ids):] = torch.tensor(request.prompt_ids, dtype=torch.long)
            mask[index, width - len(request.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache)
        rows = [self._new_row(request) for request in joining]
        finished = self._choose_and_emit(rows, logits)
        self._merge(cache, mask, rows)
        self._leave(finished, None)

    def _new_row(self, request: Request) -> _Row:
        import torch

        row = _Row(request, length=len(request.prompt_ids))
        sampling = request.sampling
        if sampling.repetition_penalty != 1.0:
            row.seen = torch.zeros((1, len(request.prompt_ids) + sampling.max_new_tokens + 1), dtype=torch.long,
                                   device=self.device)
            row.seen[0, :row.length] = torch.tensor(request.prompt_ids, dtype=torch.long)
        if sampling.min_new_tokens > 0 and request.stop_ids:
            row.stop_tensor = torch.tensor(sorted(request.stop_ids), dtype=torch.long, device=self.device)
        return row

    def _step(self) -> None:
        """One token for every row."""
        import torch

        ids = torch.tensor([[row.last] for row in self._rows], dtype=torch.long, device=self.device)
        positions = torch.tensor([[row.length] for row in self._rows], dtype=torch.long, device=self.device)
        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long, device=self.device)], 1)
        logits = self._forward(ids, mask, positions, self._cache)
        self._mask = mask
        self.steps += 1
        self.rows_stepped += len(self._rows)
        for row in self._rows:
            row.length += 1
        self._leave(self._choose_and_emit(self._rows, logits), None)

    def _choose_and_emit(self, rows: list[_Row], logits) -> list[_Row]:
        """Each row's next token with its own settings, handed to its reader; returns the rows that are done."""
        import torch

        chosen = torch.argmax(logits, dim=-1)  # the choice of every greedy row without penalty, in one kernel
        for index, row in enumerate(rows):
            sampling = row.request.sampling
            plain = sampling.temperature <= 0 and sampling.repetition_penalty == 1.0 and (
                row.stop_tensor is None or row.generated >= sampling.min_new_tokens)
            if not plain:
                chosen[index] = choose_next(logits[index:index + 1], row.seen, len(row.request.prompt_ids)
                                            + row.generated, row.generated, sampling, row.stop_tensor)[0, 0]
        done = []
        for row, token in zip(rows, chosen.tolist()):
            if row.seen is not None:
                row.seen[0, len(row.request.prompt_ids) + row.generated] = token
            if self._hand_out(row, token):
                done.append(row)
        return done

    def _hand_out(self, row: _Row, token: int) -> bool:
        """Give ``row``'s reader its next token; True when that ends the reply (a stop id, or max_new_tokens)."""
        request = row.request
        row.generated += 1
        row.last = token
        request.tokens.put(token)
        if token in request.stop_ids:
            self._finish(request, "stop")
            return True
        if row.generated >= request.sampling.max_new_tokens:
            self._finish(request, "length")
            return True
        return False

    # ------------------------------------------------------------------------------------- batch shape
    def _merge(self, cache, mask, rows: list[_Row]) -> None:
        """Join prefilled rows (their cache and mask) to the batch, padding the shorter side on the left."""
        import torch
        import torch.nn.functional as F

        if not self._rows:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(tensor, columns: int):
            return F.pad(tensor, (0, 0, columns, 0)) if columns else tensor

        old, new = width - self._mask.shape[1], width - mask.shape[1]
        for layer in range(len(self._cache.key_cache)):
            self._cache.key_cache[layer] = torch.cat([pad(self._cache.key_cache[layer], old),
                                                      pad(cache.key_cache[layer], new)], 0)
            self._cache.value_cache[layer] = torch.cat([pad(self._cache.value_cache[layer], old),
                                                        pad(cache.value_cache[layer], new)], 0)
        self._mask = torch.cat([F.pad(self._mask, (old, 0)), F.pad(mask, (new, 0))], 0)
        self._cache._seen_tokens = width
        self._rows = self._rows + rows

    def _leave(self, rows: list[_Row], reason: str | None) -> None:
        """Take ``rows`` out of the batch (``reason``: finish their requests with it), and cut the padding
        columns that no remaining row uses."""
        import torch

        if not rows:
            return
        if reason is not None:
            for row in rows:
                self._finish(row.request, reason)
        gone = {id(row) for row in rows}
        keep = [index for index, row in enumerate(self._rows) if id(row) not in gone]
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            return
        self._rows = [self._rows[index] for index in keep]
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._mask = self._mask.index_select(0, index)
        first = int(self._mask.any(0).nonzero()[0, 0])
        self._mask = self._mask[:, first:]
        for layer in range(len(self._cache.key_cache)):
            self._cache.key_cache[layer] = self._cache.key_cache[layer].index_select(0, index)[:, :, first:]
            self._cache.value_cache[layer] = self._cache.value_cache[layer].index_select(0, index)[:, :, first:]
        self._cache._seen_tokens = self._mask.shape[1]


@atexit.register
def _stop_all() -> None:
    for batcher in list(_BATCHERS):
        batcher.stop()
