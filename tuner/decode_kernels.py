"""Fewer, larger kernels in a chat model's decode step (CUDA): what a token costs beyond reading the weights.

At batch 1 a 7B step reads 13.5 GB of weights (4 ms on the H100) but took 8.8 ms: each of its 32 layers runs
about 40 kernels, most of them tiny (the RMSNorms' eight element-wise operations each, the rotary embedding's
ten, seven separate matrix-vector products). In a CUDA graph a kernel costs no launch from Python, but each
still costs a few microseconds of its own. Three levers, applied to the loaded model in place:

- ``fuse``: the query, key and value projections of a layer become one matrix product, and so do the MLP's
  gate and up projections (7 products a layer instead of 4, each larger, nearer the memory bandwidth). The
  separate weights become views of the fused one: no memory is added. Any architecture whose layers have
  ``q_proj/k_proj/v_proj`` and ``gate_proj/up_proj`` (Llama, Mistral, Qwen2, ...) is fused; the modules stay,
  only what they compute is shared: the first of a group computes the product for the group, the others read
  their part (for the same input tensor; another input computes again).
- ``lora``: an unmerged PEFT LoRA layer (4-bit bases, or ``TUNER_MERGE_ADAPTER=0``) in two kernels besides its
  base layer's instead of seven (``use_lora``).
- ``liger``: Liger Kernel's Triton RMSNorm and rotary embedding (one kernel each), for Llama, Mistral and
  Qwen2 on CUDA (the package the training's ``kernels`` lever uses).

``speed_up_decoding`` applies those that apply, then checks each changed kernel against the code it
replaces on the model's own activations (``check_each_kernel``): a model where one does not compute the same is
put back as it was.

On by default for CUDA models (the chat applies it at load; ``TUNER_DECODE_KERNELS=0`` turns it off). H100,
7B-shaped Llama, batch-1 decoder (``bench/decode_kernels.py``): bf16 123.7 tokens/s with the model's own
kernels, 131.3 fused, 163.1 fused + Liger; 4-bit 159.0 and 205.6 with Liger (4-bit layers are not fused); 4-bit
with an unmerged adapter, in the app, 83.6 before and 143.2 with all three (bench/results/h100-decode-kernels.txt). On
CPU the fused products were no faster (the embedded model: batch 1 the same, a batch of 20 about 6 % slower),
so the CPU path never uses it.

    python -m tuner.decode_kernels MODEL_DIR     (what it does to a model, and its check)
"""

from __future__ import annotations

import os
import threading
import types

ENV = "TUNER_DECODE_KERNELS"
# The RMSNorm classes whose forward is weight * (x.float() * rsqrt(mean(x^2) + eps)).to(dtype): Liger's "llama"
# casting mode computes exactly that.
_LLAMA_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_ROPE_MODULES = ("llama", "mistral", "qwen2")  # transformers.models.<name>.modeling_<name>.apply_rotary_pos_emb


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


class _FusedProduct:
    """One matrix product for several weights that take the same input: each member reads its slice."""

    def __init__(self, weights: list, biases: list | None = None):
        import torch

        self.weight = torch.cat(weights)
        self.bias = torch.cat(biases) if biases and all(b is not None for b in biases) else None
        self.bounds, start = [], 0
        for weight in weights:
            self.bounds.append((start, start + weight.shape[0]))
            start += weight.shape[0]
        self.count = len(weights)
        self._last = threading.local()  # a thread's input, product and the parts it has handed out

    def part(self, index: int, x):
        import torch.nn.functional as F

        last = self._last
        if getattr(last, "x", None) is not x or index in last.served:
            last.x, last.y, last.served = x, F.linear(x, self.weight, self.bias), set()
        last.served.add(index)
        start, stop = self.bounds[index]
        y = last.y[..., start:stop]
        if len(last.served) == self.count:
            last.x = last.y = None  # hold no activation between steps
        return y


def _plain_linear(module):
    """The module's nn.Linear, or its base layer's under a PEFT LoRA wrapper; None for anything else (4-bit)."""
    import torch

    linear = getattr(module, "base_layer", module)
    return linear if type(linear) is torch.nn.Linear else None


_PATCHED_ATTR = "_tuner_patched_modules"


def patch_forward(model, module, forward) -> None:
    """Give ``module`` its own forward, and note it on ``model`` so that ``restore`` finds it."""
    module.forward = types.MethodType(forward, module)
    patched = getattr(model, _PATCHED_ATTR, None)
    if patched is None:
        patched = []
        object.__setattr__(model, _PATCHED_ATTR, patched)  # a plain list, not a submodule
    patched.append(module)


def _fuse_group(model, parent, names: tuple[str, ...]) -> bool:
    linears = [_plain_linear(getattr(parent, name, None)) for name in names]
    if any(linear is None for linear in linears):
        return False
    first = linears[0].weight
    if any(l.in_features != linears[0].in_features or l.weight.dtype != first.dtype or
           l.weight.device != first.device or "forward" in vars(l) for l in linears):
        return False
    fused = _FusedProduct([linear.weight.data for linear in linears],
                          [None if linear.bias is None else linear.bias.data for linear in linears])
    for index, (linear, (start, stop)) in enumerate(zip(linears, fused.bounds)):
        linear.weight.data = fused.weight[start:stop]  # a view: the separate copy is freed
        if fused.bias is not None:
            linear.bias.data = fused.bias[start:stop]
        patch_forward(model, linear, lambda self, x, _i=index, _f=fused: _f.part(_i, x))
    return True


SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))  # linears that read the same input


def fuse_projections(model) -> int:
    """Fuse q/k/v and gate/up in every layer of ``model``; returns how many groups were fused."""
    count = 0
    for module in list(model.modules()):
        for names in SIBLINGS:
            if all(hasattr(module, name) for name in names):
                count += _fuse_group(model, module, names)
    return count


def lora_parts(module):
    """(A, B, scaling) of a PEFT LoRA layer that ``use_lora``'s forward computes as PEFT does: one active plain
    LoRA adapter (no DoRA or other variant), not merged, no bias; None for anything else."""
    import torch

    lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
    if not isinstance(lora_a, torch.nn.ModuleDict) or not isinstance(lora_b, torch.nn.ModuleDict) or \
            "forward" in vars(module) or getattr(module, "merged", True) or getattr(module, "disable_adapters", True):
        return None
    active = list(getattr(module, "active_adapters", []))
    if len(active) != 1 or active[0] not in lora_a or active[0] in (getattr(module, "lora_variant", None) or {}):
        return None
    a, b = lora_a[active[0]], lora_b[active[0]]
    if type(a) is not torch.nn.Linear or type(b) is not torch.nn.Linear or a.bias is not None or b.bias is not None:
        return None
    return a, b, float(module.scaling[active[0]])


def _lora_forward(self, x, args, kwargs, product, index, b_t, scale):
    import torch

    if args or kwargs or self.training:  # what this forward does not handle (dropout, PEFT's mixed batches)
        return type(self).forward(self, x, *args, **kwargs)
    result = self.base_layer(x)
    low = product.part(index, x.to(product.weight.dtype))
    flat = result.reshape(-1, result.shape[-1])
    return torch.addmm(flat, low.reshape(-1, low.shape[-1]).to(flat.dtype), b_t, alpha=scale).view(result.shape)


def _lora_group(model, members: list, parts: list, dtype) -> None:
    product = _FusedProduct([a.weight.detach().to(dtype) for a, _, _ in parts])
    for index, (module, (_, b, scale)) in enumerate(zip(members, parts)):
        b_t = b.weight.detach().to(dtype).t()
        patch_forward(model, module, lambda self, x, *args, _p=product, _i=index, _b=b_t, _s=scale, **kwargs:
                       _lora_forward(self, x, args, kwargs, _p, _i, _b, _s))


def use_lora(model) -> int:
    """Each unmerged PEFT LoRA layer of ``model`` in two kernels besides its base layer's: one product for the A
    matrices of a layer's siblings together (q/k/v, gate/up), and one multiply-add (``addmm``) for B, its scaling
    and the sum, in the model's dtype. PEFT runs seven (a copy of the 4-bit output, casts to float32 and back,
    A, B, the scaling, the sum): 224 such layers in a 7B model on all linears. Returns how many layers changed."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is None:
        return 0
    dtype, count = embeddings.weight.dtype, 0
    for parent in list(model.modules()):
        for names in SIBLINGS:
            members = [getattr(parent, name, None) for name in names]
            parts = [lora_parts(member) if member is not None else None for member in members]
            if all(parts) and len({(a.in_features, a.weight.device) for a, _, _ in parts}) == 1:
                _lora_group(model, members, parts, dtype)
                count += len(members)
    for module in list(model.modules()):
        if parts := lora_parts(module):
            _lora_group(model, [module], [parts], dtype)
            count += 1
    return count


def _liger_norm_forward(self, hidden_states):
    from liger_kernel.ops.rms_norm import LigerRMSNormFunction

    if not hidden_states.is_cuda:
        return type(self).forward(self, hidden_states)
    return LigerRMSNormFunction.apply(hidden_states, self.weight, self.variance_epsilon, 0.0, "llama", False)


_ORIGINAL_ROPE: dict = {}


def _rope_dispatch(original):
    """Liger's rotary kernel for one-token steps (decoding), transformers' function for the rest: the kernel is
    compiled anew for each batch size (Triton constants), and a prompt's forward, once a reply, gains nothing from
    it. The decode steps' batch sizes are few (powers of two) and compiled when the steps are captured at load; the
    prefills' group sizes are any, and compiling one in the middle of serving stalled every reply (H100, 20
    sessions: 372-594 tokens/s against 705-789 since)."""
    def apply_rotary_pos_emb(q, k, cos, sin, position_ids=None, unsqueeze_dim=1):
        if q.is_cuda and unsqueeze_dim == 1 and q.dim() == 4 and q.shape[2] == 1:
            from liger_kernel.ops.rope import LigerRopeFunction

            return LigerRopeFunction.apply(q, k, cos, sin, position_ids, unsqueeze_dim)
        return original(q, k, cos, sin, position_ids, unsqueeze_dim)
    apply_rotary_pos_emb.tuner_original = original
    return apply_rotary_pos_emb


def use_liger(model) -> int:
    """Liger's RMSNorm on ``model``'s norms and its rotary embedding for its family (CUDA tensors only; others
    keep transformers' code); returns how many modules changed (0: not CUDA, no Liger, or another family)."""
    import importlib
    import importlib.util

    from tuner.kernels import liger_available

    device = next(model.parameters()).device
    if device.type != "cuda" or not liger_available():
        return 0
    count = 0
    for module in model.modules():
        if type(module).__name__ in _LLAMA_NORMS and "forward" not in vars(module) and \
                hasattr(module, "variance_epsilon"):
            patch_forward(model, module, _liger_norm_forward)
            count += 1
    family = getattr(model.config, "model_type", "")
    if family in _ROPE_MODULES and count:
        name = f"transformers.models.{family}.modeling_{family}"
        if importlib.util.find_spec(name):
            modeling = importlib.import_module(name)
            if not hasattr(modeling.apply_rotary_pos_emb, "tuner_original"):
                _ORIGINAL_ROPE[name] = modeling.apply_rotary_pos_emb
                modeling.apply_rotary_pos_emb = _rope_dispatch(modeling.apply_rotary_pos_emb)
            count += 1
    return count


def restore(model) -> None:
    """Put back what ``fuse_projections`` and ``use_liger`` changed (fused weights stay: their views are the
    same values)."""
    import importlib

    for module in getattr(model, _PATCHED_ATTR, None) or []:
        vars(module).pop("forward", None)
    object.__setattr__(model, _PATCHED_ATTR, [])
    for name, original in _ORIGINAL_ROPE.items():
        importlib.import_module(name).apply_rotary_pos_emb = original
    _ORIGINAL_ROPE.clear()


def _probe_ids(model):
    import torch

    vocab = int(getattr(model.config, "vocab_size", 2) or 2)
    return torch.tensor([[(31 * i + 7) % vocab for i in range(24)]], device=next(model.parameters()).device)


def _probe_logits(model):
    import torch

    with torch.no_grad():
        return model(input_ids=_probe_ids(model), use_cache=False).logits.float()


def _record_inputs(model) -> tuple[dict, list]:
    """Run the probe prompt with the levers on; returns each patched module's first input (by module) and the
    first arguments the patched rotary embedding got, with the function it replaced."""
    import importlib

    import torch

    inputs: dict = {}
    hooks = [module.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].detach().clone()))
             for module in getattr(model, _PATCHED_ATTR, None) or []]
    ropes: list = []
    dispatchers = {name: importlib.import_module(name).apply_rotary_pos_emb for name in _ORIGINAL_ROPE}
    for name, original in _ORIGINAL_ROPE.items():
        modeling, patched = importlib.import_module(name), dispatchers[name]

        def recorder(q, k, cos, sin, *rest, _patched=patched, _original=original):
            if not ropes:
                ropes.append((_patched, _original, [t.detach().clone() for t in (q, k, cos, sin)], rest))
            return _patched(q, k, cos, sin, *rest)
        modeling.apply_rotary_pos_emb = recorder
    try:
        with torch.no_grad():
            logits = model(input_ids=_probe_ids(model), use_cache=False).logits
    finally:
        for hook in hooks:
            hook.remove()
        for name, patched in dispatchers.items():
            importlib.import_module(name).apply_rotary_pos_emb = patched
    if not bool(torch.isfinite(logits).all()):
        from tuner.decode import DecodeUnsupported

        raise DecodeUnsupported("the fused kernels' logits are not finite")
    return inputs, ropes


def check_each_kernel(model) -> float:
    """Each module the levers changed, and the rotary embedding, against its own code on the same input: the
    model's activations on a probe prompt. Raises DecodeUnsupported past ``tuner.decode.graph_tolerance()``
    (relative to the largest output); returns the largest relative difference seen.

    Kernels are compared one by one, not through the whole model: rounding differences grow through the layers
    (a 7B-shaped model with random weights: Liger's norms and rotary moved its logits by 6 %, while each kernel
    agrees with transformers' code to bfloat16's rounding)."""
    import torch

    from tuner.decode import check_same_logits

    names = {module: name for name, module in model.named_modules()}
    inputs, ropes = _record_inputs(model)
    worst = 0.0

    def compare(got, want, where: str) -> None:
        nonlocal worst
        error = check_same_logits(got.float(), want.float(), where=f" in {where}",
                                  what="the outputs of a faster kernel")
        worst = max(worst, error)

    with torch.no_grad():
        for module, x in inputs.items():
            compare(module.forward(x), type(module).forward(module, x), names.get(module, type(module).__name__))
        for patched, original, (q, k, cos, sin), rest in ropes:
            # the last position alone: a one-token step, the shape the patched function hands to Liger's kernel
            q, k, cos, sin = (t[..., -1:, :].contiguous() for t in (q, k, cos, sin))
            got = patched(q.clone(), k.clone(), cos, sin, *rest)  # Liger's kernel may write into q and k
            want = original(q.clone(), k.clone(), cos, sin, *rest)
            for got_part, want_part, which in zip(got, want, ("queries", "keys")):
                compare(got_part, want_part, f"the rotary embedding of the {which}")
    return worst


def speed_up_decoding(model, fuse: bool = True, liger: bool = True, lora: bool = True) -> str:
    """Apply the levers that apply to ``model`` and check each changed kernel (``check_each_kernel``); returns a
    note for the chat's status ("" when nothing applied). A kernel that does not compute what it replaces puts
    the whole model back as it was, and the note says so."""
    from tuner.decode import DecodeUnsupported

    parts = []
    if fuse and (groups := fuse_projections(model)):
        parts.append(f"{groups} fused projections")
    if lora and (layers := use_lora(model)):
        parts.append(f"{layers} LoRA layers in two kernels")
    if liger and use_liger(model):
        parts.append("Liger norms and rotary")
    if not parts:
        return ""
    try:
        worst = check_each_kernel(model)
    except DecodeUnsupported as error:
        restore(model)
        return f"kernels left as they were: {error}"
    same = "the same outputs" if worst == 0 else f"each within {100 * worst:.2g} % of the model's own"
    return f"{', '.join(parts)} ({same})"


def main(argv: list[str] | None = None) -> int:
    import argparse

    import torch
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(prog="python -m tuner.decode_kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a model folder (or 'embedded')")
    args = parser.parse_args(argv)
    from tuner.models import resolve_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), torch_dtype=dtype).to(device).eval()
    print(speed_up_decoding(model) or "nothing to do for this model here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
