"""Activation offload, switched on by the spec's ``offload_activations`` setting.

With gradient checkpointing (XTuner turns it on for every LoRA and QLoRA job) a step keeps one tensor per
decoder layer on the GPU from the forward pass to the backward pass: the layer's input. With QLoRA the
residual stream is fp32 (peft's ``prepare_model_for_kbit_training`` upcasts embeddings and norms), so a 7B
model at 2048 tokens keeps 32 x 32 MiB = 1 GiB there. With this lever those inputs wait in pinned host
memory instead: copied out on a side stream while the next layers compute, and copied back one layer ahead
of the backward pass that needs them, so the copies overlap the work instead of adding to it.

Only the tensors that a checkpointed call saves are moved: the calls through a transformers model's
``_gradient_checkpointing_func`` (reentrant checkpointing, transformers' default and XTuner's), of which
only the large CUDA tensors that need a gradient (the hidden states, not the masks or position ids). A model
that checkpoints some other way trains as before, and the log says that nothing was moved.

CUDA only: ``spec_problems`` refuses the setting on a machine without a CUDA GPU (there the tensors are in
host memory already). The job runner passes it to ``xtuner train`` in ``TUNER_OFFLOAD_ACTIVATIONS``; the
start-up hook in ``tuner/xtuner_boot/sitecustomize.py`` (see ``tuner.xtuner_compat``) then wraps
``SupervisedFinetune.compute_loss`` so that each forward pass runs with the offload.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from typing import Any, Iterator

from tuner.kernels import after_import, log

ENV = "TUNER_OFFLOAD_ACTIVATIONS"
MIN_BYTES = 1 << 20  # smaller saved tensors stay where they are: a copy would cost more than it frees


class _OnHost:
    """A saved tensor's pinned host copy, and its way back to the device."""

    __slots__ = ("host", "device", "index", "copied", "loaded", "on_device", "taken")

    def __init__(self, host, device, index: int, copied) -> None:
        self.host, self.device, self.index, self.copied = host, device, index, copied
        self.loaded = None  # event: the copy back to the device is done
        self.on_device = None  # that copy, until the backward pass takes it
        self.taken = False


class CheckpointOffload:
    """Saved-tensor hooks for one forward and backward pass: ``pack`` sends a checkpoint input to pinned host
    memory on a side stream; ``unpack`` brings it back and starts bringing the one saved before it (the
    backward pass meets them in reverse order)."""

    def __init__(self) -> None:
        self.saved: list[_OnHost] = []

    def moved_bytes(self) -> int:
        return sum(item.host.nbytes for item in self.saved)

    def pack(self, tensor):
        if not (tensor.is_cuda and tensor.requires_grad and tensor.nbytes >= MIN_BYTES):
            return tensor
        import torch

        side = _side_stream(tensor.device)
        side.wait_stream(torch.cuda.current_stream(tensor.device))
        with torch.cuda.stream(side):
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            copied = side.record_event()
        tensor.record_stream(side)  # its memory is reused only once the copy has read it
        item = _OnHost(host, tensor.device, len(self.saved), copied)
        self.saved.append(item)
        return item

    def unpack(self, item):
        if not isinstance(item, _OnHost):
            return item
        import torch

        if item.on_device is None:
            self._load(item)
        current = torch.cuda.current_stream(item.device)
        current.wait_event(item.loaded)
        tensor, item.on_device, item.taken = item.on_device, None, True
        tensor.record_stream(current)  # allocated on the side stream, used (and freed) on this one
        before = self.saved[item.index - 1] if item.index > 0 else None
        if before is not None and before.on_device is None and not before.taken:
            self._load(before)
        return tensor

    def _load(self, item: _OnHost) -> None:
        import torch

        side = _side_stream(item.device)
        with torch.cuda.stream(side):
            side.wait_event(item.copied)
            tensor = torch.empty(item.host.shape, dtype=item.host.dtype, device=item.device)
            tensor.copy_(item.host, non_blocking=True)
            item.loaded = side.record_event()
        item.on_device = tensor


_side_streams: dict[Any, Any] = {}


def _side_stream(device):
    """The copies' stream of ``device``: one per process, so the allocator's blocks of its copies are reused."""
    import torch

    if device not in _side_streams:
        _side_streams[device] = torch.cuda.Stream(device)
    return _side_streams[device]


# ------------------------------------------------------------------------------------------ routing
_active: list[CheckpointOffload] = []  # the offload of the forward pass now running, if any
_checkpointing_modules: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()


def _through_offload(checkpoint):
    """``checkpoint`` run under the active offload's saved-tensor hooks (as itself when there is none)."""
    import torch

    def offloading_checkpoint(function, *args, **kwargs):
        if not _active:
            return checkpoint(function, *args, **kwargs)
        offload = _active[-1]
        with torch.autograd.graph.saved_tensors_hooks(offload.pack, offload.unpack):
            return checkpoint(function, *args, **kwargs)

    offloading_checkpoint.tuner_offload = True
    return offloading_checkpoint


def route_checkpoints(model) -> int:
    """Send ``model``'s gradient-checkpointed calls through the offload; returns how many modules checkpoint.
    Done before every forward pass: XTuner's evaluation hook turns checkpointing off and on again, and
    transformers then sets a fresh checkpoint function."""
    modules = _checkpointing_modules.get(model)
    if modules is None:
        modules = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
        _checkpointing_modules[model] = modules
    for module in modules:
        function = getattr(module, "_gradient_checkpointing_func", None)
        if callable(function) and not getattr(function, "tuner_offload", False):
            module._gradient_checkpointing_func = _through_offload(function)
    return len(modules)


@contextlib.contextmanager
def offload_checkpoint_inputs(model) -> Iterator[CheckpointOffload]:
    """Run a forward pass of ``model`` inside this: its checkpoint inputs go to pinned host memory until the
    backward pass needs them."""
    route_checkpoints(model)
    offload = CheckpointOffload()
    _active.append(offload)
    try:
        yield offload
    finally:
        _active.remove(offload)


# ----------------------------------------------------------------------------- the training process
def install_training_hooks() -> None:
    """In a training process: offload the checkpoint inputs when ``TUNER_OFFLOAD_ACTIVATIONS`` is 1."""
    if os.environ.get(ENV) != "1":
        return
    after_import("xtuner.model.sft", _wrap_compute_loss)


def _wrap_compute_loss(sft) -> None:
    cls = sft.SupervisedFinetune
    original = cls.compute_loss
    reported = []

    def compute_loss(self, data, data_samples=None):
        with offload_checkpoint_inputs(self.llm) as offload:
            result = original(self, data, data_samples)
        if not reported:
            reported.append(True)
            log(f"tuner: {_describe(offload, len(_checkpointing_modules.get(self.llm, [])))}")
        return result

    cls.compute_loss = compute_loss


def _describe(offload: CheckpointOffload, checkpointing_modules: int) -> str:
    if not offload.saved:
        return (f"activation offload moved nothing: no large checkpoint input was saved "
                f"({checkpointing_modules} modules checkpoint through transformers)")
    return (f"activation offload: {len(offload.saved)} checkpoint inputs, "
            f"{offload.moved_bytes() / 2**20:.0f} MiB per step, wait in pinned host memory")

