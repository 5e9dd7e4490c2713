"""The chosen experts' outputs from paged expert tensors, in exactly the
arithmetic of the block (or of the experts implementation) they stand in
for: the same operations, in the same order, in the same dtypes, so that
with the model's own choice the output is bit-equal to the original's.

`tensors_of(expert)` gives an expert's tensors from the device pool;
`expert_fn(x, tensors)` applies one expert (`glu` for per-expert modules,
`fused_glu` for fused tensors).
"""

from typing import Callable, List

import torch
import torch.nn.functional as F

TensorsOf = Callable[[int], List[torch.Tensor]]


def glu(act_fn):
    """A per-expert module's forward, down(act(gate(x)) * up(x)), as
    nn.Linear computes it (Mixtral's w2(act(w1 x) * w3 x) is the same)."""
    def apply(x, tensors):
        gate, up, down = tensors
        return F.linear(act_fn(F.linear(x, gate)) * F.linear(x, up), down)
    return apply


def fused_glu(act_fn):
    """A fused expert: gate and up rows of one matrix, split in two."""
    def apply(x, tensors):
        gate_up, down = tensors
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(act_fn(gate) * up, down)
    return apply


def in_id_order(x, chosen, weights, num_experts, tensors_of: TensorsOf, expert_fn):
    """Transformers 4.x's softmax blocks and 5.x's eager experts: the chosen
    experts in id order, each over its (top-k position, token) pairs; an
    output times its weight (in the weights' dtype), cast to the hidden
    dtype, index_add_-ed."""
    out = torch.zeros_like(x)
    mask = F.one_hot(chosen, num_classes=num_experts).permute(2, 1, 0)
    for expert in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
        expert = expert[0]
        position, token = torch.where(mask[expert])
        y = expert_fn(x[token], tensors_of(int(expert))) * weights[token, position, None]
        out.index_add_(0, token, y.to(x.dtype))
    return out


def in_token_order_float32(x, chosen, weights, num_experts, tensors_of: TensorsOf, expert_fn):
    """DeepSeek-V3's 4.x `moe`: accumulated in the weights' dtype (float32)
    over (token, top-k position) pairs, experts in id order, cast to the
    hidden dtype at the end."""
    out = torch.zeros_like(x, dtype=weights.dtype)
    mask = F.one_hot(chosen, num_classes=num_experts).permute(2, 0, 1)
    for expert in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
        expert = expert[0]
        token, position = torch.where(mask[expert])
        y = expert_fn(x[token], tensors_of(int(expert)))
        out.index_add_(0, token, y * weights[token, position].unsqueeze(-1))
    return out.type(x.dtype)


def _stacked(chosen, tensors_of: TensorsOf):
    """Each fused part stacked per (token, position) sample, as indexing the
    model's (experts, ...) parameter with the samples' expert ids gives."""
    ids = chosen.reshape(-1).tolist()
    distinct = {e: tensors_of(e) for e in dict.fromkeys(ids)}
    return [torch.stack([distinct[e][part] for e in ids]) for part in range(2)]


def batched_mm(x, chosen, weights, act_fn, tensors_of: TensorsOf):
    """Transformers 5's `batched_mm` experts implementation: per sample,
    bmm with the sample's expert matrices, weighted, then summed over the
    top-k positions in their order."""
    tokens, k = chosen.shape
    token_idx = torch.arange(tokens, device=x.device).unsqueeze(1).expand(-1, k).reshape(-1)
    gate_up, down = _stacked(chosen, tensors_of)
    h = torch.bmm(gate_up, x[token_idx].unsqueeze(-1)).squeeze(-1)
    gate, up = h.chunk(2, dim=-1)
    y = torch.bmm(down, (act_fn(gate) * up).unsqueeze(-1)).squeeze(-1)
    # (Transformers then multiplies by a mask of valid expert ids, all ones
    # here: exact, so left out.)
    y = y * weights.reshape(-1).unsqueeze(-1)
    return y.view(tokens, k, x.shape[-1]).sum(dim=1).to(x.dtype)


def _grouped_mm_function():
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm_available() -> bool:
    return _grouped_mm_function() is not None


def grouped_mm(x, chosen, weights, act_fn, tensors_of: TensorsOf):
    """Transformers 5's `grouped_mm` experts implementation: samples sorted
    by expert, one grouped matrix multiply per projection over the groups,
    weighted, unsorted, summed over the top-k positions. Only the chosen
    experts' matrices are passed (Transformers passes all, with empty
    groups). Needs PyTorch's grouped_mm (2.9+): written against its
    documented API and not run here (Debian's PyTorch is 1.13)."""
    mm = _grouped_mm_function()
    if mm is None:
        raise ImportError("the grouped_mm experts implementation needs PyTorch's grouped_mm "
                          "(torch.nn.functional.grouped_mm or torch._grouped_mm, PyTorch 2.9+)")
    tokens, k = chosen.shape
    token_idx = torch.arange(tokens, device=x.device).unsqueeze(1).expand(-1, k).reshape(-1)
    ids = chosen.reshape(-1)
    perm = torch.argsort(ids)
    inv_perm = torch.argsort(perm)
    distinct, counts = torch.unique(ids, return_counts=True)
    offsets = torch.cumsum(counts, dim=0, dtype=torch.int32)
    parts = [tensors_of(int(e)) for e in distinct.tolist()]
    gate_up = torch.stack([p[0] for p in parts])
    down = torch.stack([p[1] for p in parts])
    selected = x[token_idx][perm]
    h = mm(selected.to(gate_up.dtype), gate_up.transpose(-2, -1), offs=offsets)
    gate, up = h.chunk(2, dim=-1)
    y = mm((act_fn(gate) * up).to(down.dtype), down.transpose(-2, -1), offs=offsets)
    y = y * weights.reshape(-1)[perm].unsqueeze(-1)
    return y[inv_perm].view(tokens, k, x.shape[-1]).sum(dim=1).to(x.dtype)


# Transformers 5's experts implementations (config._experts_implementation)
# that fused experts are computed by here.
FUSED_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")
