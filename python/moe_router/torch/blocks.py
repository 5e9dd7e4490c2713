"""Finding the sparse-MoE blocks of a PyTorch model, in the module layouts of
Hugging Face Transformers, and saying exactly what each computes.

Supported (read from Transformers' modeling code):
- per-expert modules, the layout of Transformers 4.x: a block with `gate`
  (nn.Linear, no bias), `experts` (nn.ModuleList) and `top_k`; each expert
  either Mixtral's `w1`/`w3`/`w2` (MixtralBlockSparseTop2MLP) or
  `gate_proj`/`up_proj`/`down_proj` (Qwen2-MoE, Qwen3-MoE, OLMoE) and an
  `act_fn`. Softmax over the gate logits, top-k, renormalised always for
  Mixtral's layout and when the block's `norm_topk_prob` says so for the
  others; the block returns (hidden states, router logits). Qwen2-MoE's
  `shared_expert` with its sigmoid `shared_expert_gate` is computed as the
  block does and stays where it is.
- fused expert tensors, the layout of Transformers 5 for Mixtral: `gate` a
  MixtralTopKRouter (its `weight` is the gate), `experts.gate_up_proj`
  (experts, 2 x intermediate, hidden; gate then up) and `experts.down_proj`
  (experts, hidden, intermediate); the block returns the hidden states.

Anything else with a gate and experts (a gate bias, a score-correction bias
or grouped top-k as in DeepSeek-V3, an unknown expert layout or router) is
refused by name: routing it with these rules would silently be wrong.
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F


class UnsupportedModel(ValueError):
    """The model, or one of its blocks, cannot be offloaded faithfully."""


# Attributes that mean a routing rule these blocks do not implement.
_UNSUPPORTED_ROUTING = ("e_score_correction_bias", "n_group", "topk_group", "routed_scaling_factor")


@dataclass
class MoeBlock:
    """One sparse-MoE block and how to compute it with experts held elsewhere."""
    name: str  # its path in the model
    module: nn.Module
    gate_weight: torch.Tensor  # (experts, hidden)
    num_experts: int
    top_k: int
    normalize: bool  # renormalise the top-k probabilities to sum 1
    weights_in_hidden_dtype: bool  # cast the routing weights as 4.x does
    returns_logits: bool  # (hidden, router logits), else hidden only
    # Per expert, its tensors in the order `compute` takes them.
    expert_tensors: Callable[[int], List[torch.Tensor]]
    # compute(x, tensors, act_fn) -> the expert's output for rows x.
    compute: Callable[[torch.Tensor, List[torch.Tensor], Callable], torch.Tensor]
    act_fn: Callable
    # Qwen2-MoE: (shared_expert, shared_expert_gate).
    shared: Optional[Tuple[nn.Module, nn.Module]] = None
    # Parameters that hold the experts, to move to host memory and back.
    expert_parameters: List[Tuple[nn.Module, str]] = field(default_factory=list)
    # Per expert, the checkpoint names of its tensors relative to the block,
    # in expert_tensors' order; None where a checkpoint's names do not map
    # one to one (fused tensors, which Transformers fuses when loading).
    checkpoint_names: Optional[Callable[[int], List[str]]] = None


def _glu(x, tensors, act_fn):
    gate, up, down = tensors
    return F.linear(act_fn(F.linear(x, gate)) * F.linear(x, up), down)


def _fused_glu(x, tensors, act_fn):
    gate_up, down = tensors
    gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
    return F.linear(act_fn(gate) * up, down)


_PER_EXPERT_LAYOUTS = {
    # names of (gate, up, down) projections -> whether top-k is always renormalised
    ("w1", "w3", "w2"): True,
    ("gate_proj", "up_proj", "down_proj"): False,
}


def _plain_linear(module, what, name):
    if not isinstance(module, nn.Linear):
        raise UnsupportedModel(f"{name}: {what} is a {type(module).__name__}, not nn.Linear")
    if module.bias is not None:
        raise UnsupportedModel(f"{name}: {what} has a bias, which these blocks do not implement")
    return module.weight


def _check_routing(module, name):
    for attr in _UNSUPPORTED_ROUTING:
        if getattr(module, attr, None) is not None:
            raise UnsupportedModel(
                f"{name}: routing with '{attr}' (grouped or biased top-k) is not implemented")


def _per_expert_block(name, module):
    experts = module.experts
    first = experts[0]
    for names, always_normalize in _PER_EXPERT_LAYOUTS.items():
        if all(isinstance(getattr(first, n, None), nn.Linear) for n in names):
            break
    else:
        raise UnsupportedModel(
            f"{name}: experts of type {type(first).__name__} have none of the known layouts "
            f"(w1/w3/w2 or gate_proj/up_proj/down_proj)")
    for i, expert in enumerate(experts):
        for n in names:
            _plain_linear(getattr(expert, n, None), f"expert {i}'s {n}", name)
    if always_normalize:
        normalize = True
    elif isinstance(getattr(module, "norm_topk_prob", None), bool):
        normalize = module.norm_topk_prob
    else:
        raise UnsupportedModel(f"{name}: no norm_topk_prob to say whether top-k is renormalised")
    shared = None
    if getattr(module, "shared_expert", None) is not None:
        shared_gate = getattr(module, "shared_expert_gate", None)
        if not isinstance(shared_gate, nn.Linear):
            raise UnsupportedModel(f"{name}: a shared expert without a shared_expert_gate")
        shared = (module.shared_expert, shared_gate)
    params = [(getattr(e, n), "weight") for e in experts for n in names]
    return MoeBlock(
        name=name, module=module, gate_weight=_plain_linear(module.gate, "the gate", name),
        num_experts=len(experts), top_k=int(module.top_k), normalize=normalize,
        weights_in_hidden_dtype=True, returns_logits=True,
        expert_tensors=lambda e: [getattr(experts[e], n).weight for n in names],
        compute=_glu, act_fn=first.act_fn, shared=shared, expert_parameters=params,
        checkpoint_names=lambda e: [f"experts.{e}.{n}.weight" for n in names])


def _fused_block(name, module):
    router, experts = module.gate, module.experts
    if type(router).__name__ != "MixtralTopKRouter":
        raise UnsupportedModel(
            f"{name}: router {type(router).__name__} is not one whose rule is known "
            f"(MixtralTopKRouter)")
    if getattr(router, "bias", None) is not None:
        raise UnsupportedModel(f"{name}: the router has a bias")
    gate_up, down = experts.gate_up_proj, experts.down_proj
    num_experts = gate_up.shape[0]
    if down.shape[0] != num_experts or gate_up.dim() != 3 or down.dim() != 3 or \
            gate_up.shape[1] != 2 * down.shape[2] or gate_up.shape[2] != down.shape[1]:
        raise UnsupportedModel(
            f"{name}: fused expert tensors of shapes {tuple(gate_up.shape)} and "
            f"{tuple(down.shape)} are not (E, 2I, H) and (E, H, I)")
    for attr in ("gate_up_proj_bias", "down_proj_bias"):
        if getattr(experts, attr, None) is not None:
            raise UnsupportedModel(f"{name}: fused experts with biases are not implemented")
    return MoeBlock(
        name=name, module=module, gate_weight=router.weight, num_experts=num_experts,
        top_k=int(router.top_k), normalize=True, weights_in_hidden_dtype=False,
        returns_logits=False,
        expert_tensors=lambda e: [experts.gate_up_proj[e], experts.down_proj[e]],
        compute=_fused_glu, act_fn=experts.act_fn,
        expert_parameters=[(experts, "gate_up_proj"), (experts, "down_proj")])


def _looks_like_moe(module):
    return hasattr(module, "gate") and hasattr(module, "experts") and \
        isinstance(getattr(module, "gate"), nn.Module)


def describe_block(name: str, module: nn.Module) -> MoeBlock:
    """What `module` computes, or UnsupportedModel naming why it cannot be
    offloaded faithfully."""
    _check_routing(module, name)
    _check_routing(module.gate, name)
    if isinstance(module.experts, nn.ModuleList):
        if len(module.experts) == 0:
            raise UnsupportedModel(f"{name}: no experts")
        if not isinstance(getattr(module, "top_k", None), int):
            raise UnsupportedModel(f"{name}: no top_k")
        return _per_expert_block(name, module)
    if isinstance(getattr(module.experts, "gate_up_proj", None), torch.Tensor):
        return _fused_block(name, module)
    raise UnsupportedModel(f"{name}: experts of type {type(module.experts).__name__} have no "
                           f"known layout")


def find_moe_blocks(model: nn.Module) -> List[MoeBlock]:
    """The model's sparse-MoE blocks in forward order (module order), each
    described; UnsupportedModel if one cannot be, or if there is none."""
    blocks = []
    for name, module in model.named_modules():
        if _looks_like_moe(module) and not any(name.startswith(b.name + ".") for b in blocks):
            blocks.append(describe_block(name or type(model).__name__, module))
    if not blocks:
        raise UnsupportedModel(f"{type(model).__name__}: no sparse-MoE block (a module with a "
                               f"gate and experts) found")
    shapes = {(b.num_experts, b.top_k) for b in blocks}
    if len(shapes) != 1:
        raise UnsupportedModel(f"MoE blocks differ in (experts, top_k): {sorted(shapes)}")
    return blocks
