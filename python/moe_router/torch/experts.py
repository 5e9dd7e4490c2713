"""The chosen experts' outputs from paged expert tensors, in exactly the
arithmetic of the block (or of the experts implementation) they stand in
for: the same operations, in the same order, in the same dtypes, so that
with the model's own choice the output is bit-equal to the original's.

`tensors_of(expert)` gives an expert's tensors from the device pool;
`expert_fn(x, tensors)` applies one expert (`glu` for per-expert modules,
`fused_expert` for fused tensors, in their `FusedFormat`).
"""

from dataclasses import dataclass
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


def stacked_glu(act_fn):
    """DBRX's (4.x) expert: act(x w1^T) * (x v1^T), times w2, with w1, v1
    and w2 each (inner, hidden), as matmul computes it."""
    def apply(x, tensors):
        w1, v1, w2 = tensors
        return (act_fn(x.matmul(w1.t())) * x.matmul(v1.t())).matmul(w2)
    return apply


@dataclass(frozen=True)
class FusedFormat:
    """How a fused experts class stores and applies an expert (Transformers
    5's use_experts_implementation): `transposed` weights are (in, out)
    and applied as x @ W, else (out, in) as F.linear; `biased` experts hold
    gate_up, gate_up bias, down, down bias, else gate_up and down;
    `apply_gate` turns the gate_up projection into the down projection's
    input (the class's _apply_gate)."""
    transposed: bool
    biased: bool
    apply_gate: Callable[[torch.Tensor], torch.Tensor]


def chunked_gate(act_fn):
    """integrations/moe.py's default _apply_gate: gate and up halves."""
    def apply(gate_up):
        gate, up = gate_up.chunk(2, dim=-1)
        return act_fn(gate) * up
    return apply


def clamped_swiglu(alpha: float, limit: float):
    """GPT-OSS's gate (GptOssExperts._apply_gate in 5.x, inline in 4.x's
    forward): gate and up interleaved, gate clamped above, up both ways,
    (up + 1) * gate * sigmoid(alpha * gate)."""
    def apply(gate_up):
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=limit)
        up = up.clamp(min=-limit, max=limit)
        return (up + 1) * (gate * torch.sigmoid(gate * alpha))
    return apply


def fused_expert(fused: FusedFormat):
    """A fused expert as the class's own (eager) forward computes it."""
    if not fused.transposed and not fused.biased:
        def apply(x, tensors):
            gate_up, down = tensors
            return F.linear(fused.apply_gate(F.linear(x, gate_up)), down)
        return apply
    if fused.transposed and fused.biased:
        def apply_biased(x, tensors):
            gate_up, gate_up_bias, down, down_bias = tensors
            return fused.apply_gate(x @ gate_up + gate_up_bias) @ down + down_bias
        return apply_biased
    raise ValueError("fused experts are (out, in) without biases or (in, out) with them")


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


def in_expert_sorted_order(x, chosen, weights, num_experts, tensors_of: TensorsOf,
                           expert_fn):
    """DeepSeek-V2's 4.x `moe`: the (token, position) samples sorted by
    expert with argsort, each expert in id order on its run of them, the
    outputs concatenated and put back in sample order, then each token's
    outputs times its weights in the weights' dtype, summed over the
    positions, cast back."""
    counts = chosen.new_zeros((chosen.shape[0], num_experts))
    counts.scatter_(1, chosen, 1)
    tokens_per_expert = counts.sum(dim=0)
    indices = chosen.view(-1).argsort()
    sorted_tokens = x[indices // chosen.shape[1]]
    outputs, start = [], 0
    for expert, count in enumerate(tokens_per_expert.tolist()):
        if count == 0:
            continue
        outputs.append(expert_fn(sorted_tokens[start:start + count], tensors_of(expert)))
        start += count
    outs = torch.cat(outputs, dim=0) if outputs else sorted_tokens.new_empty(0)
    back = torch.empty_like(outs)
    back[indices] = outs
    return (back.view(*chosen.shape, -1).type(weights.dtype).mul_(weights.unsqueeze(dim=-1))
            .sum(dim=1).type(back.dtype))


def _sum_over_every_expert(outs, ids, num_experts, top_k):
    """The sum over all experts of a block that runs every expert, from the
    outputs of the chosen ones (`ids`, ascending): the others' outputs are
    exact zeros, so with at most two experts per token the sum over the
    chosen alone is the model's bit for bit, in any order; with more, the
    zeros are put back so that the sum runs over every expert in the
    model's order (PyTorch's reduction over more than 64 is not
    sequential)."""
    out = torch.stack(outs)
    if top_k <= 2:
        return out.sum(dim=0)
    every = out.new_zeros((num_experts,) + tuple(out.shape[1:]))
    every[ids] = out
    return every.sum(dim=0)


def on_scaled_inputs(x, scores, chosen, act_fn, tensors_of: TensorsOf):
    """Llama 4's block (Llama4TextMoe and Llama4TextExperts): every expert
    runs on every token's input times the token's weight for it (zero
    unless chosen); gate_up by bmm, up * act(gate), down by bmm; summed
    over the experts. Only the chosen experts run here, on the same (tokens,
    hidden) inputs."""
    ids = sorted(set(chosen.reshape(-1).tolist()))
    outs = []
    for e in ids:
        # bmm over a batch of one: the model's bmm gives each expert the same
        # product, and the expert's matrices are used in place, not copied.
        gate_up, down = (t.unsqueeze(0) for t in tensors_of(e))
        inputs = (x * scores[:, e].reshape(-1, 1)).unsqueeze(0)
        gate, up = torch.bmm(inputs, gate_up).chunk(2, dim=-1)
        outs.append(torch.bmm(up * act_fn(gate), down)[0])
    return _sum_over_every_expert(outs, ids, scores.shape[1], chosen.shape[1])


def on_weighted_outputs(x, chosen, weights, num_experts, act_fn, tensors_of: TensorsOf):
    """4.x Qwen3-VL-MoE's text experts at inference: every expert runs on
    every token by bmm, up * act(gate), its output times the token's weight
    for it (scattered over all experts: zero unless chosen), summed over the
    experts. Only the chosen experts run here, on every token."""
    dense = torch.zeros((x.shape[0], num_experts), dtype=weights.dtype,
                        device=weights.device).scatter_(1, chosen, weights)
    ids = sorted(set(chosen.reshape(-1).tolist()))
    outs = []
    for e in ids:
        gate_up, down = (t.unsqueeze(0) for t in tensors_of(e))
        gate, up = torch.bmm(x.unsqueeze(0), gate_up).chunk(2, dim=-1)
        outs.append(torch.bmm(up * act_fn(gate), down)[0] * dense[:, e, None])
    return _sum_over_every_expert(outs, ids, num_experts, chosen.shape[1])


def sorted_by_expert(chosen, weights, num_experts):
    """Granite-MoE's gating output for a choice: the (token, position)
    samples sorted by expert id, their tokens, their weights in that order,
    and how many samples each expert has, as GraniteMoeTopKGating gives
    them."""
    gates = torch.zeros([weights.size(0), num_experts], dtype=weights.dtype,
                        device=weights.device).scatter(1, chosen, 1)
    expert_size = gates.long().sum(0).tolist()
    _, index_sorted = chosen.flatten().sort(0)
    return {"sorted_indices": index_sorted,
            "batch_index": index_sorted.div(chosen.shape[1], rounding_mode="trunc"),
            "batch_gates": weights.flatten()[index_sorted], "expert_size": expert_size}


def _stacked(chosen, tensors_of: TensorsOf):
    """Each fused part stacked per (token, position) sample, as indexing the
    model's (experts, ...) parameter with the samples' expert ids gives."""
    ids = chosen.reshape(-1).tolist()
    distinct = {e: tensors_of(e) for e in dict.fromkeys(ids)}
    parts = len(next(iter(distinct.values())))
    return [torch.stack([distinct[e][part] for e in ids]) for part in range(parts)]


def _split(parts, fused: FusedFormat):
    """(gate_up, gate_up bias or None, down, down bias or None)."""
    if fused.biased:
        return parts
    return parts[0], None, parts[1], None


def _batched_linear(x, weight, bias, transposed):
    out = torch.bmm(x.unsqueeze(1), weight).squeeze(1) if transposed else \
        torch.bmm(weight, x.unsqueeze(-1)).squeeze(-1)
    return out if bias is None else out + bias


def batched_mm(x, chosen, weights, fused: FusedFormat, tensors_of: TensorsOf):
    """Transformers 5's `batched_mm` experts implementation: per sample,
    bmm with the sample's expert matrices (plus biases), weighted, then
    summed over the top-k positions in their order."""
    tokens, k = chosen.shape
    token_idx = torch.arange(tokens, device=x.device).unsqueeze(1).expand(-1, k).reshape(-1)
    gate_up, gate_up_bias, down, down_bias = _split(_stacked(chosen, tensors_of), fused)
    h = _batched_linear(x[token_idx], gate_up, gate_up_bias, fused.transposed)
    y = _batched_linear(fused.apply_gate(h), down, down_bias, fused.transposed)
    # (Transformers then multiplies by a mask of valid expert ids, all ones
    # here: exact, so left out.)
    y = y * weights.reshape(-1).unsqueeze(-1)
    return y.view(tokens, k, x.shape[-1]).sum(dim=1).to(x.dtype)


def _grouped_mm_function():
    return getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)


def grouped_mm_available() -> bool:
    return _grouped_mm_function() is not None


def grouped_mm(x, chosen, weights, fused: FusedFormat, tensors_of: TensorsOf):
    """Transformers 5's `grouped_mm` experts implementation: samples sorted
    by expert, one grouped matrix multiply per projection over the groups
    (plus each sample's expert's bias), weighted, unsorted, summed over the
    top-k positions. Only the chosen experts' matrices are passed
    (Transformers passes all, with empty groups). Needs PyTorch's
    grouped_mm (2.9+): written against its documented API and not run here
    (Debian's PyTorch is 1.13)."""
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
    experts = [tensors_of(int(e)) for e in distinct.tolist()]
    gate_up, _, down, _ = _split([torch.stack(p) for p in zip(*experts)], fused)
    gate_up_bias, down_bias = None, None
    if fused.biased:  # per sample, in sorted order
        _, gate_up_bias, _, down_bias = _split(_stacked(ids[perm].unsqueeze(1), tensors_of),
                                               fused)

    def linear(inputs, weight, bias):
        w = weight if fused.transposed else weight.transpose(-2, -1)
        out = mm(inputs.to(w.dtype), w, offs=offsets)
        return out if bias is None else out + bias

    h = linear(x[token_idx][perm], gate_up, gate_up_bias)
    y = linear(fused.apply_gate(h), down, down_bias)
    y = y * weights.reshape(-1)[perm].unsqueeze(-1)
    return y[inv_perm].view(tokens, k, x.shape[-1]).sum(dim=1).to(x.dtype)


# Transformers 5's experts implementations (config._experts_implementation)
# that fused experts are computed by here.
FUSED_IMPLEMENTATIONS = ("eager", "batched_mm", "grouped_mm")


def scattered_from_sorted_samples(x, chosen, weights, tensors_of: TensorsOf, expert_fn):
    """AFMoE's experts: the (token, position) samples sorted by expert
    (stable), each expert on its run, the outputs times their weights in
    float32, cast to the hidden dtype, scatter_add_-ed to their tokens."""
    top_k = chosen.shape[-1]
    token_indices = torch.arange(x.shape[0], device=x.device).repeat_interleave(top_k)
    expert_indices = chosen.reshape(-1)
    flat_weights = weights.reshape(-1)
    sorting = torch.argsort(expert_indices, stable=True)
    token_indices = token_indices[sorting]
    expert_indices = expert_indices[sorting]
    flat_weights = flat_weights[sorting]
    dispatched = x.index_select(0, token_indices)
    outputs = torch.zeros_like(dispatched)
    experts, counts = torch.unique_consecutive(expert_indices, return_counts=True)
    start = 0
    for expert, count in zip(experts.tolist(), counts.tolist()):
        outputs[start:start + count] = expert_fn(dispatched[start:start + count],
                                                 tensors_of(expert))
        start += count
    weighted = (outputs.to(torch.float32) * flat_weights.unsqueeze(-1)).to(x.dtype)
    out = torch.zeros_like(x)
    out.scatter_add_(0, token_indices.unsqueeze(-1).expand_as(weighted), weighted)
    return out
