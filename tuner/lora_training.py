"""Fused LoRA layers for training: a few large kernels where PEFT launches many small ones (issue 12).

PEFT runs each LoRA layer over a 4-bit base as a string of small operations, each a kernel and an autograd
node: bitsandbytes' dequantization (three kernels with double quantization) and product, a defensive copy of
the 4-bit output, casts of the input to float32 and back, dropout, A, B, the scaling and the sum; in backward
the same again. A 7B with LoRA on all 224 linears and gradient checkpointing launches ~15,000 kernels a step,
and the GPU waits for Python between them (71 % busy on the H100: bench/results/h100-summary.txt).

``fuse_lora(model)`` gives every eligible PEFT LoRA layer a forward that runs one autograd function for its
group of siblings that read the same input (q/k/v, gate/up; o and down alone):

- forward: each base weight dequantized by bitsandbytes' own op (the double-quantized absmax is dequantized
  once, here, and kept: 1/16 of the bf16 weights' size) and one product per base; one product for the A
  matrices of the whole group when there is no dropout (one per member with dropout, which PEFT draws per
  member); one multiply-add (``addmm``) per member for B, the scaling and the sum;
- backward: written out. The base weights are frozen, so they get no gradient: dequantized again, one product
  each for the input's gradient; A and B get theirs in one product each.

The LoRA weights stay what PEFT made them (float32 parameters: the optimizer's master copy); the products run
in the compute dtype (autocast's when it is on, else the base layer's), as PEFT's do under XTuner's autocast.
A layer this does not compute as PEFT does (DoRA and other variants, several active adapters, merged, bias on
the LoRA matrices, 8-bit bases) keeps PEFT's forward; so does any call with extra arguments.

    python -m tuner.lora_training [MODEL_DIR]   (fused against PEFT on a model: outputs and gradients)
"""

from __future__ import annotations

import functools
import os
import sys

from tuner.decode_kernels import SIBLINGS, lora_parts, patch_forward

ENV = "TUNER_LORA_KERNEL"  # fused / peft, set by the job runner for the training process
FROZEN_ENV = "TUNER_FROZEN_DTYPE"  # bf16 / fp16: the frozen weights go back to it after peft's upcast
CHOICES = ("auto", "fused", "peft")
FROZEN_CHOICES = ("auto", "compute", "fp32")


def _is_4bit(layer) -> bool:
    return getattr(getattr(layer, "weight", None), "quant_state", None) is not None


class _Base:
    """A frozen base linear layer as the fused function reads it: its weight in a dtype, and its bias."""

    def __init__(self, layer):
        import torch

        self.layer = layer
        self.bias = layer.bias
        self._absmax = None
        if _is_4bit(layer):
            self.dtype = getattr(layer, "compute_dtype", None) or layer.weight.quant_state.dtype
        elif type(layer) is torch.nn.Linear:
            self.dtype = layer.weight.dtype
        else:
            raise TypeError(f"no fused LoRA over {type(layer).__name__}")

    def weight(self, dtype):
        """The weight (out x in) in ``dtype``: dequantized when it is 4-bit."""
        import torch

        weight = self.layer.weight
        if not _is_4bit(self.layer):
            return weight if weight.dtype == dtype else weight.to(dtype)
        state = weight.quant_state
        return torch.ops.bitsandbytes.dequantize_4bit.default(weight.data, self.absmax(), state.blocksize,
                                                               state.quant_type, state.shape, dtype)

    def absmax(self):
        """The 4-bit weight's block scales in float32, dequantized once (they are double-quantized) on the
        weight's device."""
        state = self.layer.weight.quant_state
        if self._absmax is None or self._absmax.device != state.absmax.device:
            absmax = state.absmax
            if state.nested:
                import bitsandbytes.functional as bnb_functional

                absmax = bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
            self._absmax = absmax.float()
        return self._absmax


def _dropout_p(module, adapter: str) -> float | None:
    """The dropout probability of ``adapter`` in training (0 for none), or None for a kind this does not know."""
    import torch

    dropout = module.lora_dropout[adapter]
    if type(dropout) is torch.nn.Identity:
        return 0.0
    if type(dropout) is torch.nn.Dropout:
        return float(dropout.p)
    return None


class _Group:
    """The sibling LoRA layers that read one input, and the input and outputs of their last call."""

    def __init__(self, members: list, parts: list, adapter: str):
        self.members = members
        self.bases = [_Base(member.base_layer) for member in members]
        self.adapter = adapter
        self.scales = [scale for _, _, scale in parts]
        self.p = [_dropout_p(member, adapter) for member in members]
        self.widths = [b.weight.shape[0] for _, b, _ in parts]
        self.ranks = [a.weight.shape[0] for a, _, _ in parts]
        self._x = self._outputs = None
        self._served: set[int] = set()
        self._casts: dict = {}
        self.caching = False

    def cast(self, params: list, dtype):
        """``params`` (A matrices of a lane, or one B) concatenated in ``dtype``: made once per pass through the
        model (``fuse_lora`` clears them when the input embeddings run), where forward, recompute and backward
        each cast. Not by the parameters' versions: bitsandbytes' 8-bit optimizers write in place unseen."""
        key = (tuple(id(p) for p in params), dtype)
        cached = self._casts.get(key)
        if cached is None:
            cached = _cat([p.detach() for p in params]).to(dtype)
            if self.caching:
                self._casts[key] = cached
        return cached

    def clear(self) -> None:
        self._casts.clear()

    def params(self) -> list:
        """A then B of each member: the live parameters, so the optimizer's updates are what is read."""
        out = []
        for member in self.members:
            out += [member.lora_A[self.adapter].weight, member.lora_B[self.adapter].weight]
        return out

    def dropout(self) -> list[float]:
        return [p if member.training else 0.0 for p, member in zip(self.p, self.members)]

    def part(self, index: int, x):
        """Member ``index``'s output for ``x``: the group's function runs once per input."""
        if self._x is not x or index in self._served:
            self._x, self._served = x, set()
            self._outputs = _function().apply(x, self, self.dropout(), *self.params())
        self._served.add(index)
        out = self._outputs[index]
        if len(self._served) == len(self.members):
            self._x = self._outputs = None  # hold no activation between calls
        return out


def _compute_dtype(x, group: _Group):
    import torch

    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return group.bases[0].dtype


def _lanes(dropout: list[float]) -> list[list[int]]:
    """Members whose A products share one input: all of them without dropout, else one lane per member."""
    if not any(dropout):
        return [list(range(len(dropout)))]
    return [[i] for i in range(len(dropout))]


def _cat(tensors: list, dim: int = 0):
    import torch

    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def _forward_group(ctx, x, group, dropout, params, dtype):
    """The group's outputs, and what its backward needs."""
    import torch

    flat = x.reshape(-1, x.shape[-1])
    xc = flat if flat.dtype == dtype else flat.to(dtype)
    lanes, inputs, masks, low = _lanes(dropout), [], [], [None] * len(group.members)
    for lane in lanes:
        p = dropout[lane[0]]
        xd, mask = torch.native_dropout(xc, p, True) if p > 0 else (xc, torch.empty(0, device=x.device))
        product = torch.mm(xd, group.cast([params[2 * i] for i in lane], dtype).t())
        start = 0
        for i in lane:
            low[i] = product[:, start:start + group.ranks[i]]
            start += group.ranks[i]
        inputs.append(xd)
        masks.append(mask)
    outputs = []
    for i, base in enumerate(group.bases):
        weight = base.weight(dtype)
        y = torch.mm(xc, weight.t()) if base.bias is None else torch.addmm(base.bias.to(dtype), xc, weight.t())
        y.addmm_(low[i], group.cast([params[2 * i + 1]], dtype).t(), alpha=group.scales[i])
        y = y.view(*x.shape[:-1], y.shape[-1])
        outputs.append(y if y.dtype == x.dtype else y.to(x.dtype))
    ctx.group, ctx.dtype, ctx.dropout, ctx.lanes, ctx.x_meta = group, dtype, dropout, lanes, (x.shape, x.dtype)
    return outputs, [*inputs, *masks, *low, *params]


def _backward_group(ctx, grads):
    """Gradients of x and of each member's A and B (the base weights are frozen: none for them)."""
    import torch

    group, dtype, dropout, lanes = ctx.group, ctx.dtype, ctx.dropout, ctx.lanes
    n, saved = len(group.members), ctx.saved_tensors
    inputs, masks = saved[:len(lanes)], saved[len(lanes):2 * len(lanes)]
    low, params = saved[2 * len(lanes):2 * len(lanes) + n], saved[2 * len(lanes) + n:]
    shape, x_dtype = ctx.x_meta
    dys = [None if g is None else g.reshape(-1, g.shape[-1]).to(dtype) for g in grads]
    want_x, want_params = ctx.needs_input_grad[0], any(ctx.needs_input_grad[3:])
    dx = None
    if want_x:
        for i, base in enumerate(group.bases):
            if dys[i] is not None:
                weight = base.weight(dtype)
                dx = torch.mm(dys[i], weight) if dx is None else dx.addmm_(dys[i], weight)
    # g_i = s_i dy_i B_i: the gradient reaching member i's low-rank product (zero where dy_i is None)
    g = [torch.zeros(inputs[0].shape[0], group.ranks[i], dtype=dtype, device=inputs[0].device) if dys[i] is None
         else torch.mm(dys[i], group.cast([params[2 * i + 1]], dtype)).mul_(group.scales[i]) for i in range(n)]
    param_grads = [None] * (2 * n)
    for lane, xd, mask in zip(lanes, inputs, masks):
        g_lane = _cat([g[i] for i in lane], 1)
        if want_params:
            d_a = torch.mm(g_lane.t(), xd)
            start = 0
            for i in lane:
                param_grads[2 * i] = d_a[start:start + group.ranks[i]].to(params[2 * i].dtype)
                start += group.ranks[i]
        if want_x:
            a_lane = group.cast([params[2 * i] for i in lane], dtype)
            if mask.numel():  # through the dropout: the kept positions, scaled as in forward
                scale = 1 / (1 - dropout[lane[0]])
                d_xd = torch.ops.aten.native_dropout_backward(torch.mm(g_lane, a_lane), mask, scale)
                dx = d_xd if dx is None else dx.add_(d_xd)
            else:
                dx = torch.mm(g_lane, a_lane) if dx is None else dx.addmm_(g_lane, a_lane)
    if want_params:
        for i in range(n):
            b = params[2 * i + 1]
            param_grads[2 * i + 1] = torch.zeros_like(b) if dys[i] is None else \
                torch.mm(dys[i].t(), low[i]).mul_(group.scales[i]).to(b.dtype)
    dx = None if dx is None else dx.view(shape).to(x_dtype)
    return (dx, None, None, *param_grads)


@functools.cache
def _function():
    """The autograd function of a group (defined on first use: torch is imported lazily)."""
    import torch

    class LoraGroupFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, group, dropout, *params):
            dtype = _compute_dtype(x, group)
            with torch.autocast(x.device.type, enabled=False):
                outputs, saved = _forward_group(ctx, x, group, dropout, params, dtype)
            ctx.save_for_backward(*saved)
            return tuple(outputs)

        @staticmethod
        def backward(ctx, *grads):
            return _backward_group(ctx, grads)

    return LoraGroupFunction


def _eligible(module) -> str | None:
    """The active adapter of a PEFT LoRA layer this computes as PEFT does (see ``lora_parts``), else None."""
    import torch

    if lora_parts(module) is None:
        return None
    adapter, base = module.active_adapters[0], module.base_layer
    if _dropout_p(module, adapter) is None or not (_is_4bit(base) or type(base) is torch.nn.Linear):
        return None
    return adapter


def _forward(self, x, *args, **kwargs):
    group, index = self._tuner_lora_group
    if args or kwargs or self.disable_adapters or self.merged or list(self.active_adapters) != [group.adapter]:
        return type(self).forward(self, x, *args, **kwargs)
    return group.part(index, x)


def _make_group(model, members: list, adapter: str) -> _Group:
    group = _Group(members, [lora_parts(m) for m in members], adapter)
    for index, member in enumerate(members):
        object.__setattr__(member, "_tuner_lora_group", (group, index))
        patch_forward(model, member, _forward)
    return group


_HOOK_ATTR = "_tuner_lora_cast_hook"


def _clear(groups: list) -> None:
    for group in groups:
        group.clear()


def fuse_lora(model) -> int:
    """Give the eligible PEFT LoRA layers of ``model`` the fused forward; returns how many layers changed.
    Each pass through the input embeddings drops the LoRA weights' casts of the pass before (the optimizer may
    have changed the weights since); a model without ``get_input_embeddings`` casts them at every use."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    groups = []
    for parent in list(model.modules()):
        for names in SIBLINGS:
            members = [getattr(parent, name, None) for name in names]
            adapters = [_eligible(m) if m is not None else None for m in members]
            if all(adapters) and len(set(adapters)) == 1 and len({_group_key(m) for m in members}) == 1:
                groups.append(_make_group(model, members, adapters[0]))
    for module in list(model.modules()):
        if "forward" not in vars(module) and (adapter := _eligible(module)):
            groups.append(_make_group(model, [module], adapter))
    for group in groups:
        group.caching = embeddings is not None
    if groups and embeddings is not None:
        hook = embeddings.register_forward_pre_hook(lambda *_: _clear(groups))
        object.__setattr__(model, _HOOK_ATTR, hook)
    return sum(len(group.members) for group in groups)


def _group_key(module):
    base = module.base_layer
    weight = base.weight
    return base.in_features, weight.device, _is_4bit(base) or weight.dtype, getattr(base, "compute_dtype", None)


def unfuse_lora(model) -> None:
    """Put PEFT's own forward back on every layer ``fuse_lora`` changed (and only those: the decode kernels'
    ``restore`` also puts back module-wide functions)."""
    for module in model.modules():
        if vars(module).pop("_tuner_lora_group", None) is not None:
            vars(module).pop("forward", None)
    hook = vars(model).pop(_HOOK_ATTR, None)
    if hook is not None:
        hook.remove()


def resolve(choice: str, deepspeed: str = "none", cuda_available: bool | None = None) -> str:
    """``fused`` or ``peft``: what ``choice`` means. auto: fused on a CUDA GPU, where it pays (the kernel launches
    it saves are what the GPU waits for), except under DeepSpeed ZeRO-3, which partitions the base weights this
    reads whole; PEFT's on CPU, where it was no faster (the embedded model, r=16, 256 tokens: 2.0-2.2 s a step
    either way)."""
    if choice not in CHOICES:
        raise ValueError(f"lora_kernel must be one of {', '.join(CHOICES)}, not {choice!r}")
    if choice != "auto":
        return choice
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return "fused" if cuda_available and not deepspeed.startswith("deepspeed_zero3") else "peft"


def resolve_frozen(choice: str, precision: str) -> str:
    """The dtype the frozen weights are kept in after peft's upcast: ``bf16``/``fp16``, or "" to leave them in
    float32. auto: bf16 when training in bf16 (fp16 keeps peft's float32 norms, for fp16's narrow range)."""
    if choice not in FROZEN_CHOICES:
        raise ValueError(f"frozen_dtype must be one of {', '.join(FROZEN_CHOICES)}, not {choice!r}")
    if precision == "fp32" or choice == "fp32" or (choice == "auto" and precision != "bf16"):
        return ""
    return precision


def cast_frozen(model, dtype) -> int:
    """Put ``model``'s frozen float32 floating-point weights in ``dtype`` (peft's prepare_model_for_kbit_training
    upcasts them all, which makes the residual stream float32: twice the memory and a cast around every 4-bit
    layer). Returns how many parameters changed."""
    import torch

    moved = 0
    for param in model.parameters():
        if param.dtype == torch.float32 and not param.requires_grad and type(param).__name__ != "Params4bit":
            param.data = param.data.to(dtype)
            moved += param.numel()
    return moved


def install_training_hooks() -> None:
    """In a training process: what ``TUNER_LORA_KERNEL`` and ``TUNER_FROZEN_DTYPE`` ask for, applied to the
    model XTuner builds right after it adds LoRA."""
    if os.environ.get(ENV) != "fused" and not os.environ.get(FROZEN_ENV):
        return
    from tuner.kernels import after_import

    after_import("xtuner.model.sft", _wrap_prepare_for_lora)


def _wrap_prepare_for_lora(sft) -> None:
    cls = sft.SupervisedFinetune
    original = cls._prepare_for_lora

    def _prepare_for_lora(self, *args, **kwargs):
        original(self, *args, **kwargs)
        import torch

        from tuner.kernels import log

        frozen = os.environ.get(FROZEN_ENV)
        if frozen:
            moved = cast_frozen(self.llm, {"bf16": torch.bfloat16, "fp16": torch.float16}[frozen])
            log(f"tuner: {moved / 1e6:.1f}M frozen parameters kept in {frozen} (not float32)")
        if os.environ.get(ENV) == "fused":
            log(f"tuner: {fuse_lora(self.llm)} LoRA layers fused (tuner/lora_training.py)")

    cls._prepare_for_lora = _prepare_for_lora


def compare_with_peft(model, input_ids) -> dict:
    """Loss and LoRA gradients of ``model`` (a PEFT model) with PEFT's forward and with the fused one, from the
    same weights and input (dropout off: the two draw different masks). Returns the largest relative
    differences; the model is left with PEFT's forward."""
    import torch

    def run():
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.detach(), grads

    training = model.training
    model.eval()  # dropout off
    try:
        with torch.enable_grad():
            loss_peft, grads_peft = run()
            changed = fuse_lora(model)
            try:
                loss_fused, grads_fused = run()
            finally:
                unfuse_lora(model)
    finally:
        model.train(training)
        model.zero_grad(set_to_none=True)
    worst = max((((grads_fused[n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in grads_peft.items()),
                default=0.0)
    return {"layers": changed, "loss_peft": loss_peft.item(), "loss_fused": loss_fused.item(),
            "loss_rel_diff": abs(loss_fused.item() - loss_peft.item()) / max(abs(loss_peft.item()), 1e-12),
            "grad_rel_diff": worst, "grads": len(grads_peft), "missing": sorted(set(grads_peft) - set(grads_fused))}


def main(argv: list[str] | None = None) -> int:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuner.models import resolve_model

    argv = sys.argv[1:] if argv is None else argv
    path = resolve_model(argv[0] if argv else "embedded")
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.1, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, lora)
    for name, param in model.named_parameters():  # B starts at zero: give it values, or A gets no gradient
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    ids = AutoTokenizer.from_pretrained(path)("I am the assistant of the studio.", return_tensors="pt").input_ids
    result = compare_with_peft(model, ids)
    print(f"{result['layers']} LoRA layers fused; loss {result['loss_peft']:.6f} (PEFT) vs {result['loss_fused']:.6f}"
          f" (fused); largest gradient difference {100 * result['grad_rel_diff']:.4f} % over {result['grads']} tensors")
    return 0 if result["loss_rel_diff"] < 1e-4 and result["grad_rel_diff"] < 1e-3 and not result["missing"] else 1


if __name__ == "__main__":
    sys.exit(main())
