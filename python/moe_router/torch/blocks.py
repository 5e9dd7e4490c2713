"""Finding the sparse-MoE blocks of a PyTorch model in the module layouts of
Hugging Face Transformers, and saying what each computes.

A block is identified by its router's class (Transformers 5, and
DeepSeek-V3's router in 4.x) or, where the router is a plain nn.Linear
(Transformers 4.x), by the block's class, never by its shape alone: a
block whose rule the engine lacks is refused by name, not routed by
another rule. The layouts, read from Transformers v4.57.6 and v5.2.0
(reproduced in moe_router.torch.layouts):

- `inline`: 4.x Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Qwen3-Next, ERNIE 4.5,
  Hunyuan-MoE, Jamba. The block
  routes itself (softmax, top-k) and loops over per-expert modules; it
  returns (hidden states, router logits).
- `dense_inline`: 4.x Qwen3-VL-MoE's text model. The block routes itself
  (softmax, top-k, renormalised) and its fused experts run every expert on
  every token by bmm, weighted by the weights scattered over all experts;
  it returns (hidden states, router logits).
- `router`: 5.x Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE, Qwen3-Next, GPT-OSS.
  A *TopKRouter returns (probabilities or logits, weights, indices); fused
  experts compute under config._experts_implementation.
- `dense_weights_router`: 4.x GPT-OSS. Its router returns (the top-k
  weights scattered over all experts, indices); its fused experts take
  those.
- `scaled_input`: Llama 4 text (4.x and 5.x alike). Its router returns
  (the top-k's sigmoid weights scattered over all experts, logits); the
  block runs every expert on inputs scaled by those weights and adds a
  shared expert.
- `parallel_experts`: Granite-MoE (4.x and 5.x alike). Its gating returns
  the samples sorted by expert; ParallelExperts `input_linear` and
  `output_linear` run each expert on its run of them.
- `deepseek_v2_router`: 4.x DeepSeek-V2. Its gate returns (indices,
  weights); the block's `moe` sorts the samples by expert.
- `deepseek_router`: 4.x DeepSeek-V3. Its router returns (indices,
  weights); the block's `moe` loops over per-expert modules.
- `dbrx_router`: 4.x DBRX. Its router returns (probabilities, weights,
  indices) in the hidden dtype; its experts stack w1, v1 and w2 per
  expert and take all three with the (batch, tokens, hidden) input.
- `token_choice_router`: AFMoE (5.x). Its router, given the block's
  expert_bias, returns (weights, indices); its per-expert modules run on
  the samples sorted by expert and are scattered back.
- `block_routes`: 5.x DeepSeek-V3, DeepSeek-V2, Hunyuan-MoE, Jamba and
  LFM2-MoE. The gate gives logits; the block's `route_tokens_to_experts` chooses; fused
  experts compute.
"""

from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch
from torch import nn

from moe_router.torch import experts as arithmetic
from moe_router.torch.routing import (BiasedSoftmaxRouting, GroupedSigmoidRouting,
                                      GroupLimitedSoftmaxRouting, ModelDtypeSigmoidRouting,
                                      PNormSoftmaxRouting, SigmoidOfTopKRouting, SoftmaxRouting,
                                      TopKThenSoftmaxRouting)


class UnsupportedModel(ValueError):
    """The model, or one of its blocks, cannot be offloaded faithfully."""


@dataclass
class MoeBlock:
    """One sparse-MoE block and how to compute it with experts held elsewhere."""
    name: str  # its path in the model
    module: nn.Module
    # inline | dense_inline | router | dense_weights_router | scaled_input |
    # parallel_experts |
    # deepseek_router | deepseek_v2_router | block_routes | dbrx_router |
    # token_choice_router
    layout: str
    family: str  # the block's (or router's) class, as named in Transformers
    num_experts: int
    top_k: int
    routing: object  # SoftmaxRouting | GroupedSigmoidRouting
    # The gate's logits for a block input, as the model computes them.
    gate_logits: Callable[[torch.Tensor], torch.Tensor]
    # Per expert, its tensors in the order `expert_fn` takes them.
    expert_tensors: Callable[[int], List[torch.Tensor]]
    # (x, tensors) -> one expert's output; None where the layout runs its
    # experts together (Llama 4).
    expert_fn: Optional[Callable]
    # Parameters that hold the experts, to move to host memory and back.
    expert_parameters: List[Tuple[nn.Module, str]] = field(default_factory=list)
    # Per expert, the checkpoint names of its tensors relative to the block,
    # in expert_tensors' order; None where a checkpoint's names do not map
    # one to one (fused tensors, which Transformers fuses when loading).
    checkpoint_names: Optional[Callable[[int], List[str]]] = None
    fused_experts: Optional[nn.Module] = None  # the experts module, when fused
    fused_format: Optional[arithmetic.FusedFormat] = None
    act_fn: Optional[Callable] = None  # Llama 4's experts' activation
    # What a router that chooses returns, in order, of: indices, weights,
    # logits, probabilities, dense (weights scattered over all experts).
    router_returns: Tuple[str, ...] = ()
    # What 4.x's inline blocks pass their gate, of (the tokens' rows, the
    # block's input): ERNIE 4.5's float32 rows, Hunyuan's (batch, tokens)
    # input.
    gate_input: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda x, h: x
    # Whether a 4.x inline block returns (hidden states, router logits), or
    # the hidden states alone (Hunyuan-MoE).
    returns_logits: bool = True

    @property
    def fused(self) -> bool:
        return self.fused_experts is not None


# Blocks with an nn.Linear gate that route by softmax top-k, by class: the
# projection names of their experts and whether top-k is renormalised
# (True, False, or None: the block's norm_topk_prob says). 4.x's route
# inline; 5.x's Jamba has its route_tokens_to_experts choose.
_INLINE_BLOCKS = {
    "MixtralSparseMoeBlock": (("w1", "w3", "w2"), True),
    "MiniMaxSparseMoeBlock": (("w1", "w3", "w2"), True),  # MiniMax-Text-01: Mixtral's
    "Qwen2MoeSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), None),
    "Qwen3MoeSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), None),
    "OlmoeSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), None),
    "FlexOlmoSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), None),  # OLMoE's
    "Qwen3NextSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), None),
    "JambaSparseMoeBlock": (("gate_proj", "up_proj", "down_proj"), False),
}
# 5.x softmax routers, by class: whether top-k is always renormalised (else
# the router's norm_topk_prob says), and whether the softmax is written
# softmax(logits.float()) rather than softmax(logits, dtype=float).
_SOFTMAX_ROUTERS = {
    "MixtralTopKRouter": (True, True),
    "MiniMaxTopKRouter": (True, True),  # MiniMax-Text-01: Mixtral's router
    "Qwen2MoeTopKRouter": (False, False),
    "Qwen3MoeTopKRouter": (False, False),
    "OlmoeTopKRouter": (False, False),
    "FlexOlmoTopKRouter": (False, False),  # OLMoE's router
    "Qwen3NextTopKRouter": (False, False),
    "Qwen3_5MoeTopKRouter": (True, False),
    "Qwen3VLMoeTextTopKRouter": (True, False),
    # Qwen3-Omni-MoE's thinker and talker (5.x): Qwen3-MoE's router.
    "Qwen3OmniMoeThinkerTextTopKRouter": (False, False),
    "Qwen3OmniMoeTalkerTextTopKRouter": (False, False),
}
# Fused experts without @use_experts_implementation: their own (eager)
# forward, whatever the configured implementation.
_UNDISPATCHED_EXPERTS = ("Qwen3OmniMoeThinkerTextExperts",)
_TOPK_SOFTMAX_ROUTERS = ("GptOssTopKRouter",)  # top-k of the logits, then softmax
_SIGMOID_OF_TOPK_ROUTERS = ("Llama4Router",)  # top-k of the logits, sigmoid weights
_MINIMAX_M2_ROUTERS = ("MiniMaxM2TopKRouter",)  # sigmoid, the block's bias
# DeepSeek-V2: softmax, group limit by the best probability; 4.x by its
# gate, 5.x by the block.
_DEEPSEEK_V2 = ("DeepseekV2MoEGate", "DeepseekV2Moe")
_HUNYUAN = ("HunYuanMoEV1Moe",)  # softmax, top-k, renormalised; a float32 gate
# Granite-MoE, its shared-MLP and hybrid (Mamba) variants: top-k of the
# logits then softmax; ParallelExperts on samples sorted by expert.
_GRANITE_ROUTERS = ("GraniteMoeTopKGating", "GraniteMoeSharedTopKGating",
                    "GraniteMoeHybridTopKGating",
                    "JetMoeTopKGating")  # JetMoE's MLP: Granite's block plus a bias
# Expert blocks left in place, resident: JetMoE's mixture of attention heads
# (its attention's experts, small beside the MLP's).
_RESIDENT_BLOCKS = ("JetMoeMoA",)
# ERNIE 4.5: softmax plus moe_statics' bias; 4.x by the block, 5.x the router.
_ERNIE = ("Ernie4_5_MoeSparseMoeBlock", "Ernie4_5_MoeTopKRouter")
# DeepSeek-V3's rule, and the families that route by it with its router
# and block under their own names (identical code at 4.57.6 and 5.2.0):
# GLM-4.5, the text model of GLM-4.5V, dots.llm1; at 5.2.0 also
# glm4_moe_lite, glm_moe_dsa, Solar Open and EXAONE MoE. Kimi K2 is
# DeepSeek-V3's architecture.
_GROUPED_SIGMOID_ROUTERS = ("DeepseekV3TopkRouter", "Glm4MoeTopkRouter",
                            "Glm4vMoeTextTopkRouter", "Dots1TopkRouter",
                            "Glm4MoeLiteTopkRouter", "GlmMoeDsaTopkRouter",
                            "SolarOpenTopkRouter", "ExaoneMoeTopkRouter")
_DBRX_ROUTERS = ("DbrxRouter",)  # softmax top-k over its p-norm; stacked experts
_AFMOE_ROUTERS = ("AfmoeTokenChoiceRouter",)  # DeepSeek-V3's rule, one group
_LFM2 = ("Lfm2MoeSparseMoeBlock",)  # sigmoid in the logits' dtype, the block's bias
# 4.x Qwen3-VL-MoE's text block: softmax top-k, every expert run densely.
_QWEN3_VL_4 = ("Qwen3VLMoeTextSparseMoeBlock",)
# Rules the engine does not have, and code that cannot run as written, by
# the class that carries them.
_SPARSEMIXER = "Phi-3.5-MoE routes by sparsemixer, which moe-router does not implement"
_CAPACITY = ("routes with an expert capacity (tokens over it are dropped), which moe-router "
             "does not implement")
_REFUSED = {
    "PhimoeSparseMoeBlock": _SPARSEMIXER,
    "PhimoeTopKRouter": _SPARSEMIXER,
    "SwitchTransformersTop1Router": "Switch Transformers " + _CAPACITY,
    "NllbMoeTop2Router": "NLLB-MoE " + _CAPACITY,
    "LongcatFlashTopkRouter": "LongCat-Flash routes to zero-computation experts, which "
                              "moe-router does not implement",
    "GPTSanJapaneseTop1Router": "GPTSAN-japanese " + _CAPACITY,
    # ERNIE 4.5's rule, but two expert sets a layer run by token modality.
    "Ernie4_5_VL_MoeMoeTopKRouter": "ERNIE 4.5 VL keeps a text and a vision set of experts "
                                    "per layer, of different sizes, each token routed within "
                                    "its modality's, which moe-router does not implement",
    "DogeCDMoE": "Doge's experts are product-key retrieval experts (a row of two embeddings "
                 "each), which moe-router does not implement",
}
KNOWN = sorted(list(_INLINE_BLOCKS) + list(_SOFTMAX_ROUTERS) + list(_TOPK_SOFTMAX_ROUTERS) +
               list(_SIGMOID_OF_TOPK_ROUTERS) + list(_GROUPED_SIGMOID_ROUTERS) +
               list(_MINIMAX_M2_ROUTERS) + list(_ERNIE) + list(_DEEPSEEK_V2) +
               list(_HUNYUAN) + list(_GRANITE_ROUTERS) + list(_DBRX_ROUTERS) +
               list(_AFMOE_ROUTERS) + list(_LFM2) + list(_QWEN3_VL_4))


def _plain_linear(module, what, name):
    if not isinstance(module, nn.Linear):
        raise UnsupportedModel(f"{name}: {what} is a {type(module).__name__}, not nn.Linear")
    if module.bias is not None:
        raise UnsupportedModel(f"{name}: {what} has a bias, which its model's rule does not have")
    return module.weight


def _flag(module, attr, name, meaning="whether top-k is renormalised"):
    value = getattr(module, attr, None)
    if not isinstance(value, bool):
        raise UnsupportedModel(f"{name}: no {attr} to say {meaning}")
    return value


def _int(module, attr, name):
    value = getattr(module, attr, None)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UnsupportedModel(f"{name}: no positive integer {attr}")
    return value


def _per_expert(name, module, names):
    """Per-expert modules (4.x): their weights, checked plain and alike."""
    experts = module.experts
    if not isinstance(experts, nn.ModuleList) or len(experts) == 0:
        raise UnsupportedModel(f"{name}: experts are not a non-empty nn.ModuleList")
    for i, expert in enumerate(experts):
        for n in names:
            if getattr(expert, n, None) is None:
                raise UnsupportedModel(
                    f"{name}: expert {i} ({type(expert).__name__}) has no {n}; the layout "
                    f"expects {'/'.join(names)}")
            _plain_linear(getattr(expert, n), f"expert {i}'s {n}", name)
    return dict(
        num_experts=len(experts),
        expert_tensors=lambda e: [getattr(experts[e], n).weight for n in names],
        expert_fn=arithmetic.glu(experts[0].act_fn),
        expert_parameters=[(getattr(e, n), "weight") for e in experts for n in names],
        checkpoint_names=lambda e: [f"experts.{e}.{n}.weight" for n in names])


def _fused_tensors(name, experts, biased):
    gate_up, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        raise UnsupportedModel(f"{name}: experts of type {type(experts).__name__} have no fused "
                               f"gate_up_proj and down_proj tensors")
    biases = [getattr(experts, a, None) for a in ("gate_up_proj_bias", "down_proj_bias")]
    if not biased and any(b is not None for b in biases):
        raise UnsupportedModel(f"{name}: fused experts of type {type(experts).__name__} have "
                               f"biases, which its model's experts do not have")
    if biased and not all(isinstance(b, torch.Tensor) for b in biases):
        raise UnsupportedModel(f"{name}: fused experts of type {type(experts).__name__} lack "
                               f"gate_up_proj_bias and down_proj_bias")
    return gate_up, down, biases


def _check_fused_shapes(name, what, gate_up, down, transposed):
    """(E, 2I, H) and (E, H, I), or transposed (E, H, 2I) and (E, I, H)."""
    fits = gate_up.dim() == 3 and down.dim() == 3 and down.shape[0] == gate_up.shape[0]
    if fits:
        (two_i, h), (h_down, i) = (reversed(gate_up.shape[1:]), reversed(down.shape[1:])) \
            if transposed else (gate_up.shape[1:], down.shape[1:])
        fits = two_i == 2 * i and h == h_down
    if not fits:
        want = "(E, H, 2I) and (E, I, H)" if transposed else "(E, 2I, H) and (E, H, I)"
        raise UnsupportedModel(f"{name}: {what} of shapes {tuple(gate_up.shape)} and "
                               f"{tuple(down.shape)} are not {want}")


def _implementation(name, experts):
    if type(experts).__name__ in _UNDISPATCHED_EXPERTS:
        return
    implementation = getattr(getattr(experts, "config", None), "_experts_implementation", None)
    if implementation not in arithmetic.FUSED_IMPLEMENTATIONS:
        raise UnsupportedModel(
            f"{name}: experts implementation {implementation!r} is not one moe-router computes "
            f"({', '.join(arithmetic.FUSED_IMPLEMENTATIONS)})")


def _fused_parts(experts, num_experts, fused: arithmetic.FusedFormat):
    names = ["gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"] \
        if fused.biased else ["gate_up_proj", "down_proj"]
    return dict(
        num_experts=num_experts,
        expert_tensors=lambda e: [getattr(experts, n)[e] for n in names],
        expert_fn=arithmetic.fused_expert(fused),
        expert_parameters=[(experts, n) for n in names],
        fused_experts=experts, fused_format=fused)


def _fused(name, experts):
    """Fused expert tensors (5.x): (E, 2I, H) gate then up, (E, H, I) down."""
    gate_up, down, _ = _fused_tensors(name, experts, biased=False)
    _check_fused_shapes(name, "fused expert tensors", gate_up, down, transposed=False)
    num_experts = gate_up.shape[0]
    if getattr(experts, "is_transposed", False):
        raise UnsupportedModel(f"{name}: transposed fused experts are not implemented")
    _implementation(name, experts)
    fused = arithmetic.FusedFormat(transposed=False, biased=False,
                                   apply_gate=arithmetic.chunked_gate(experts.act_fn))
    return _fused_parts(experts, num_experts, fused)


def _gpt_oss_experts(name, experts):
    """GPT-OSS's experts (4.x and 5.x): (E, H, 2I) gate and up interleaved,
    (E, I, H) down, a bias for each, the clamped SwiGLU."""
    gate_up, down, (gate_up_bias, down_bias) = _fused_tensors(name, experts, biased=True)
    _check_fused_shapes(name, "GPT-OSS expert tensors", gate_up, down, transposed=True)
    num_experts = gate_up.shape[0]
    if tuple(gate_up_bias.shape) != (num_experts, gate_up.shape[2]) or \
            tuple(down_bias.shape) != (num_experts, down.shape[2]):
        raise UnsupportedModel(
            f"{name}: GPT-OSS expert biases of shapes {tuple(gate_up_bias.shape)} and "
            f"{tuple(down_bias.shape)} are not (E, 2I) and (E, H)")
    alpha, limit = getattr(experts, "alpha", None), getattr(experts, "limit", None)
    if not isinstance(alpha, float) or not isinstance(limit, float):
        raise UnsupportedModel(f"{name}: GPT-OSS experts without float alpha and limit")
    if hasattr(experts, "config"):  # 5.x: dispatched on the experts implementation
        _implementation(name, experts)
    fused = arithmetic.FusedFormat(transposed=True, biased=True,
                                   apply_gate=arithmetic.clamped_swiglu(alpha, limit))
    return _fused_parts(experts, num_experts, fused)


def _inline_block(name, module, router):
    family = type(module).__name__
    names, normalize = _INLINE_BLOCKS[family]
    weight = _plain_linear(router, "the gate", name)
    top_k = _int(module, "top_k", name)
    if normalize is None:
        normalize = _flag(module, "norm_topk_prob", name)
    if getattr(module, "shared_expert", None) is not None and \
            not isinstance(getattr(module, "shared_expert_gate", None), nn.Linear):
        raise UnsupportedModel(f"{name}: a shared expert without a shared_expert_gate")
    version_5 = hasattr(module, "route_tokens_to_experts")  # Jamba
    parts = _fused(name, module.experts) if version_5 else _per_expert(name, module, names)
    return MoeBlock(name=name, module=module, layout="block_routes" if version_5 else "inline",
                    family=family, top_k=top_k,
                    routing=SoftmaxRouting(top_k, normalize, cast_weights=True,
                                           float_first=False),
                    gate_logits=lambda x: torch.nn.functional.linear(x, weight), **parts)


def _dense_inline_block(name, module, router):
    """4.x Qwen3-VL-MoE text: an nn.Linear gate, softmax top-k always
    renormalised and cast to the hidden dtype; experts (E, H, 2I) gate then
    up and (E, I, H) down, run by bmm."""
    weight = _plain_linear(router, "the gate", name)
    top_k = _int(module, "top_k", name)
    experts = module.experts
    gate_up, down, _ = _fused_tensors(name, experts, biased=False)
    _check_fused_shapes(name, "Qwen3-VL-MoE expert tensors", gate_up, down, transposed=True)
    return MoeBlock(name=name, module=module, layout="dense_inline",
                    family=type(module).__name__, top_k=top_k, num_experts=gate_up.shape[0],
                    routing=SoftmaxRouting(top_k, True, cast_weights=True, float_first=False),
                    gate_logits=lambda x: torch.nn.functional.linear(x, weight),
                    expert_tensors=lambda e: [experts.gate_up_proj[e], experts.down_proj[e]],
                    expert_fn=None, act_fn=experts.act_fn,
                    expert_parameters=[(experts, "gate_up_proj"), (experts, "down_proj")])


def _softmax_router_block(name, module, router):
    family = type(router).__name__
    always_normalize, float_first = _SOFTMAX_ROUTERS[family]
    normalize = always_normalize or _flag(router, "norm_topk_prob", name)
    top_k = _int(router, "top_k", name)
    weight = router.weight
    parts = _fused(name, module.experts)
    return MoeBlock(name=name, module=module, layout="router", family=family, top_k=top_k,
                    routing=SoftmaxRouting(top_k, normalize, cast_weights=False,
                                           float_first=float_first),
                    gate_logits=lambda x: torch.nn.functional.linear(x, weight),
                    router_returns=("probabilities", "weights", "indices"), **parts)


def _topk_softmax_block(name, module, router):
    """GPT-OSS: a router with a bias. 5.x's returns (logits, top-k weights,
    indices) and its experts dispatch on the implementation; 4.x's returns
    (the weights scattered over all experts, indices), its experts take
    those dense weights."""
    family = type(router).__name__
    weight, bias = getattr(router, "weight", None), getattr(router, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        raise UnsupportedModel(f"{name}: router {family} has no weight and bias")
    top_k = _int(router, "top_k", name)
    parts = _gpt_oss_experts(name, module.experts)
    version_5 = hasattr(module.experts, "config")
    return MoeBlock(name=name, module=module, family=family, top_k=top_k,
                    layout="router" if version_5 else "dense_weights_router",
                    routing=TopKThenSoftmaxRouting(top_k),
                    gate_logits=lambda x: torch.nn.functional.linear(x, weight, bias),
                    router_returns=("logits", "weights", "indices") if version_5 else
                    ("dense", "indices"), **parts)


def _scaled_input_block(name, module, router):
    """Llama 4 text: Llama4Router (an nn.Linear without bias), experts
    (E, H, 2I) gate then up and (E, I, H) down applied by bmm, a shared
    expert."""
    family = type(router).__name__
    _plain_linear(router, "the router", name)
    top_k = _int(router, "top_k", name)
    experts = module.experts
    gate_up, down, _ = _fused_tensors(name, experts, biased=False)
    _check_fused_shapes(name, "Llama 4 expert tensors", gate_up, down, transposed=True)
    num_experts = gate_up.shape[0]
    if not isinstance(getattr(module, "shared_expert", None), nn.Module):
        raise UnsupportedModel(f"{name}: a Llama 4 block without its shared_expert")
    weight = router.weight
    return MoeBlock(name=name, module=module, layout="scaled_input", family=family,
                    top_k=top_k, num_experts=num_experts, routing=SigmoidOfTopKRouting(top_k),
                    gate_logits=lambda x: torch.nn.functional.linear(x, weight),
                    expert_tensors=lambda e: [experts.gate_up_proj[e], experts.down_proj[e]],
                    expert_fn=None, act_fn=experts.act_fn,
                    expert_parameters=[(experts, "gate_up_proj"), (experts, "down_proj")],
                    fused_experts=experts, router_returns=("dense", "logits"))


def _choice_bias(tensor, experts, what, name):
    """A checkpoint's choice bias: one finite float per expert."""
    if not isinstance(tensor, torch.Tensor) or tensor.numel() != experts or \
            tensor.squeeze().dim() != 1:
        raise UnsupportedModel(f"{name}: {what} is not one float per expert ({experts})")
    if not torch.isfinite(tensor).all():
        raise UnsupportedModel(f"{name}: {what} is not finite")
    return tensor


def _grouped_sigmoid_block(name, module, router):
    family = type(router).__name__
    owner = module if hasattr(module, "route_tokens_to_experts") else router
    layout = "block_routes" if owner is module else "deepseek_router"
    top_k = _int(owner, "top_k", name)
    groups, kept = _int(owner, "n_group", name), _int(owner, "topk_group", name)
    normalize = _flag(owner, "norm_topk_prob", name)
    scaling = float(getattr(owner, "routed_scaling_factor", float("nan")))
    if layout == "block_routes":
        parts = _fused(name, module.experts)
    else:
        parts = _per_expert(name, module, ("gate_proj", "up_proj", "down_proj"))
    experts = parts["num_experts"]
    bias = _choice_bias(getattr(router, "e_score_correction_bias", None), experts,
                        "the router's e_score_correction_bias", name)
    if not torch.isfinite(torch.tensor(scaling)):
        raise UnsupportedModel(f"{name}: routed_scaling_factor is not finite")
    if experts % groups or kept > groups or kept * (experts // groups) < top_k:
        raise UnsupportedModel(
            f"{name}: {experts} experts in n_group {groups} keeping topk_group {kept} cannot "
            f"give top_k {top_k}")
    weight = router.weight
    routing = GroupedSigmoidRouting(
        top_k, bias, groups, kept, "sum_plus_epsilon" if normalize else "none", scaling)
    return MoeBlock(
        name=name, module=module, layout=layout, family=family, top_k=top_k, routing=routing,
        gate_logits=lambda x: torch.nn.functional.linear(x.type(torch.float32),
                                                         weight.type(torch.float32)),
        router_returns=("indices", "weights"), **parts)


def _deepseek_v2_block(name, module, router):
    """DeepSeek-V2. 4.x: DeepseekV2MoEGate chooses and returns (indices,
    weights); per-expert modules; the block's `moe` combines. 5.x: an
    nn.Linear gate; the block's route_tokens_to_experts chooses; fused
    experts."""
    version_5 = isinstance(router, nn.Linear)
    owner = module if version_5 else router
    top_k = _int(owner, "top_k", name)
    method = getattr(owner, "topk_method", None)
    if method not in ("greedy", "group_limited_greedy"):
        raise UnsupportedModel(f"{name}: topk_method {method!r} is not greedy or "
                               f"group_limited_greedy")
    groups, kept = _int(owner, "num_group", name), _int(owner, "topk_group", name)
    scaling = float(getattr(owner, "routed_scaling_factor", float("nan")))
    if not torch.isfinite(torch.tensor(scaling)):
        raise UnsupportedModel(f"{name}: routed_scaling_factor is not finite")
    if version_5:
        parts = _fused(name, module.experts)
        if method == "group_limited_greedy" and not hasattr(module, "num_experts"):
            raise UnsupportedModel(
                f"{name}: Transformers 5.2.0's DeepseekV2Moe.route_tokens_to_experts cannot run "
                f"group_limited_greedy (it reads self.num_experts, which it never sets)")
    else:
        parts = _per_expert(name, module, ("gate_proj", "up_proj", "down_proj"))
    experts = parts["num_experts"]
    if method == "group_limited_greedy" and (experts % groups or kept > groups or
                                             kept * (experts // groups) < top_k):
        raise UnsupportedModel(
            f"{name}: {experts} experts in n_group {groups} keeping topk_group {kept} cannot "
            f"give top_k {top_k}")
    weight = router.weight
    return MoeBlock(
        name=name, module=module, layout="block_routes" if version_5 else "deepseek_v2_router",
        family=type(module if version_5 else router).__name__, top_k=top_k,
        routing=GroupLimitedSoftmaxRouting(top_k, method, groups, kept, scaling),
        gate_logits=lambda x: torch.nn.functional.linear(x.type(torch.float32),
                                                         weight.type(torch.float32)),
        router_returns=("indices", "weights"), **parts)


def _hunyuan_block(name, module, router):
    """Hunyuan-MoE: HunYuanMoEV1Gate's `wg` (float32, applied to the input in
    float32) gives logits; softmax top-k renormalised, cast to the logits'
    (5.x) or hidden (4.x) dtype; a shared MLP on the block's input. 4.x
    routes inline over per-expert modules; 5.x's route_tokens_to_experts
    chooses for fused experts."""
    version_5 = hasattr(module, "route_tokens_to_experts")
    top_k = _int(module, "top_k", name)
    wg = _plain_linear(getattr(router, "wg", None), "the gate's wg", name)
    if not isinstance(getattr(module, "shared_mlp", None), nn.Module):
        raise UnsupportedModel(f"{name}: a Hunyuan-MoE block without its shared_mlp")
    parts = _fused(name, module.experts) if version_5 else \
        _per_expert(name, module, ("gate_proj", "up_proj", "down_proj"))
    return MoeBlock(
        name=name, module=module, layout="block_routes" if version_5 else "inline",
        family=type(module).__name__, top_k=top_k,
        routing=SoftmaxRouting(top_k, True, cast_weights=True, float_first=False),
        gate_logits=lambda x: torch.nn.functional.linear(
            x.float() if wg.dtype == torch.float32 else x, wg),
        gate_input=lambda x, h: h, returns_logits=False, **parts)


def _granite_block(name, module, router):
    """Granite-MoE (and its shared and hybrid variants, the same block):
    TopKGating's `layer` gives logits, made float32; top-k of them, softmax
    over those, cast to the hidden dtype; ParallelExperts `input_linear`
    (E, 2I, H) and `output_linear` (E, H, I) on the samples sorted by
    expert. 4.x's block returns (hidden states, router logits), 5.x's the
    hidden states."""
    family = type(router).__name__
    top_k = _int(router, "top_k", name)
    layer = _plain_linear(getattr(router, "layer", None), "the gating's layer", name)
    gate_up, down = (getattr(getattr(module, n, None), "weight", None)
                     for n in ("input_linear", "output_linear"))
    if not isinstance(gate_up, torch.Tensor) or not isinstance(down, torch.Tensor):
        raise UnsupportedModel(f"{name}: no input_linear and output_linear expert weights")
    _check_fused_shapes(name, "parallel expert weights", gate_up, down, transposed=False)
    return MoeBlock(
        name=name, module=module, layout="parallel_experts", family=family, top_k=top_k,
        num_experts=gate_up.shape[0], routing=TopKThenSoftmaxRouting(top_k, cast_weights=True),
        gate_logits=lambda x: torch.nn.functional.linear(x, layer).float(),
        expert_tensors=lambda e: [module.input_linear.weight[e], module.output_linear.weight[e]],
        expert_fn=None,
        expert_parameters=[(module.input_linear, "weight"), (module.output_linear, "weight")],
        router_returns=("sorted_indices", "batch_index", "batch_gates", "expert_size", "logits"))


def _dbrx_block(name, module, router):
    """DBRX (4.x): DbrxRouter returns (probabilities, top-k weights, indices),
    all in the hidden dtype; DbrxExperts stack every expert's w1, v1 and w2
    as (experts x inner, hidden) and take (hidden states, probabilities,
    weights, indices). 5.2.0's DbrxExperts reshape the hidden states to
    ffn_hidden_size and multiply by w1 untransposed: as written they run
    only where ffn_hidden_size is the model's width; refused."""
    family = type(router).__name__
    if hasattr(module, "route_tokens_to_experts"):
        raise UnsupportedModel(
            f"{name}: Transformers 5.2.0's DbrxFFN is not supported (its DbrxExperts read "
            f"ffn_hidden_size as the model's width)")
    top_k = _int(router, "moe_top_k", name)
    p = getattr(router, "moe_normalize_expert_weights", None)
    if p is not None and not (isinstance(p, (int, float)) and 0 < p < float("inf")):
        raise UnsupportedModel(f"{name}: moe_normalize_expert_weights {p!r} is not a positive "
                               f"finite p or None")
    layer = _plain_linear(getattr(router, "layer", None), "the router's layer", name)
    mlp = getattr(module.experts, "mlp", None)
    stacked = [getattr(mlp, n, None) for n in ("w1", "v1", "w2")]
    inner = getattr(mlp, "ffn_hidden_size", None)
    experts = _int(module.experts, "moe_num_experts", name)
    if not all(isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape == stacked[0].shape
               for t in stacked) or not isinstance(inner, int) or \
            stacked[0].shape[0] != experts * inner or stacked[0].shape[1] != layer.shape[1]:
        raise UnsupportedModel(
            f"{name}: DBRX experts are not w1, v1 and w2 each of (experts x ffn_hidden_size, "
            f"hidden) = ({experts} x {inner}, {layer.shape[1]})")
    shape = (experts, inner, layer.shape[1])
    return MoeBlock(
        name=name, module=module, layout="dbrx_router", family=family, top_k=top_k,
        num_experts=experts, routing=PNormSoftmaxRouting(top_k, None if p is None else float(p)),
        gate_logits=lambda x: torch.nn.functional.linear(x, layer),
        expert_tensors=lambda e: [getattr(mlp, n).view(shape)[e] for n in ("w1", "v1", "w2")],
        expert_fn=arithmetic.stacked_glu(mlp.activation_fn),
        expert_parameters=[(mlp, n) for n in ("w1", "v1", "w2")],
        fused_experts=module.experts,
        router_returns=("hidden_probabilities", "weights", "indices"))


def _afmoe_block(name, module, router):
    """AFMoE (5.x): the router, given the block's expert_bias, returns
    (weights, indices); per-expert modules combined from the samples
    sorted by expert."""
    family = type(router).__name__
    top_k = _int(router, "top_k", name)
    scaling = float(getattr(router, "route_scale", float("nan")))
    if not torch.isfinite(torch.tensor(scaling)):
        raise UnsupportedModel(f"{name}: route_scale is not finite")
    gate = _plain_linear(getattr(router, "gate", None), "the router's gate", name)
    parts = _per_expert(name, module, ("gate_proj", "up_proj", "down_proj"))
    bias = _choice_bias(getattr(module, "expert_bias", None), parts["num_experts"],
                        "the block's expert_bias", name)
    return MoeBlock(
        name=name, module=module, layout="token_choice_router", family=family, top_k=top_k,
        routing=GroupedSigmoidRouting(top_k, bias, scaling=scaling, sorted_top_k=True),
        gate_logits=lambda x: torch.nn.functional.linear(x, gate),
        router_returns=("weights", "indices"), fused_experts=module.experts, **parts)


def _lfm2_block(name, module, router):
    """LFM2-MoE (5.x): an nn.Linear gate in the model's dtype; the block's
    route_tokens_to_experts chooses (with its float32 expert_bias when
    use_expert_bias); fused experts."""
    top_k = _int(module, "top_k", name)
    normalize = _flag(module, "norm_topk_prob", name)
    biased = _flag(module, "use_expert_bias", name, "whether the choice adds expert_bias")
    scaling = float(getattr(module, "routed_scaling_factor", float("nan")))
    if not torch.isfinite(torch.tensor(scaling)):
        raise UnsupportedModel(f"{name}: routed_scaling_factor is not finite")
    gate = _plain_linear(router, "the gate", name)
    parts = _fused(name, module.experts)
    bias = _choice_bias(getattr(module, "expert_bias", None), parts["num_experts"],
                        "the block's expert_bias", name) if biased else None
    # Transformers keeps the buffer float32 whatever the model's dtype (its
    # loader casts to an empty parameter's dtype, core_model_loading.py);
    # in another dtype the sum would round where the engine's does not.
    if bias is not None and bias.dtype != torch.float32:
        raise UnsupportedModel(f"{name}: expert_bias is {bias.dtype}, not the float32 "
                               f"Transformers keeps it in")
    return MoeBlock(
        name=name, module=module, layout="block_routes", family=type(module).__name__,
        top_k=top_k, routing=ModelDtypeSigmoidRouting(top_k, bias, normalize, scaling),
        gate_logits=lambda x: torch.nn.functional.linear(x, gate),
        router_returns=("indices", "weights"), **parts)


def _minimax_m2_block(name, module, router):
    """MiniMax-M2 (5.x): the router gets the block's e_score_correction_bias
    and returns (logits, weights, indices); fused experts."""
    family = type(router).__name__
    top_k = _int(router, "top_k", name)
    parts = _fused(name, module.experts)
    bias = _choice_bias(getattr(module, "e_score_correction_bias", None), parts["num_experts"],
                        "the block's e_score_correction_bias", name)
    weight = router.weight
    return MoeBlock(
        name=name, module=module, layout="router", family=family, top_k=top_k,
        routing=GroupedSigmoidRouting(top_k, bias, normalization="sum", preset="minimax_m2"),
        gate_logits=lambda x: torch.nn.functional.linear(x.to(weight.dtype), weight),
        router_returns=("logits", "weights", "indices"), **parts)


def _ernie_block(name, module, router):
    """ERNIE 4.5. 4.x: the block routes inline with an nn.Linear gate in
    float32, its moe_statics and per-expert modules. 5.x: its router holds
    moe_statics and returns (logits, indices, weights); fused experts."""
    version_5 = not isinstance(router, nn.Linear)
    owner = router if version_5 else module
    family = type(owner).__name__
    top_k = _int(owner, "top_k", name)
    norm_min = getattr(owner, "norm_min", None)
    if not isinstance(norm_min, float) or not norm_min >= 0:
        raise UnsupportedModel(f"{name}: no non-negative float norm_min (moe_norm_min)")
    parts = _fused(name, module.experts) if version_5 else \
        _per_expert(name, module, ("gate_proj", "up_proj", "down_proj"))
    statics = getattr(owner, "moe_statics", None)
    bias = _choice_bias(getattr(statics, "e_score_correction_bias", None), parts["num_experts"],
                        "moe_statics.e_score_correction_bias", name)
    if not version_5:
        _plain_linear(router, "the gate", name)
    weight = router.weight
    return MoeBlock(
        name=name, module=module, layout="router" if version_5 else "inline", family=family,
        top_k=top_k, routing=BiasedSoftmaxRouting(top_k, bias, norm_min),
        gate_logits=lambda x: torch.nn.functional.linear(x.float(), weight.float()),
        router_returns=("logits", "indices", "weights"), gate_input=lambda x, h: x.float(),
        **parts)


def router_of(module):
    for attr in ("gate", "router"):
        router = getattr(module, attr, None)
        if isinstance(router, nn.Module):
            return router
    return None


def describe_block(name: str, module: nn.Module) -> MoeBlock:
    """What `module` computes, or UnsupportedModel naming why it cannot be
    offloaded faithfully."""
    router = router_of(module)
    for cls in (type(module).__name__, type(router).__name__):
        if cls in _REFUSED:
            raise UnsupportedModel(f"{name}: {cls}: {_REFUSED[cls]}")
    family = type(router).__name__
    if family in _SIGMOID_OF_TOPK_ROUTERS:  # an nn.Linear subclass
        return _scaled_input_block(name, module, router)
    if type(module).__name__ in _ERNIE or family in _ERNIE:
        return _ernie_block(name, module, router)
    if type(module).__name__ in _DEEPSEEK_V2 or family in _DEEPSEEK_V2:
        return _deepseek_v2_block(name, module, router)
    if type(module).__name__ in _HUNYUAN:
        return _hunyuan_block(name, module, router)
    if type(module).__name__ in _LFM2:
        return _lfm2_block(name, module, router)
    if type(module).__name__ in _QWEN3_VL_4 and isinstance(router, nn.Linear):
        return _dense_inline_block(name, module, router)
    if family in _GRANITE_ROUTERS:
        return _granite_block(name, module, router)
    if family in _MINIMAX_M2_ROUTERS:
        return _minimax_m2_block(name, module, router)
    if family in _DBRX_ROUTERS:
        return _dbrx_block(name, module, router)
    if family in _AFMOE_ROUTERS:
        return _afmoe_block(name, module, router)
    if isinstance(router, nn.Linear):
        if type(module).__name__ not in _INLINE_BLOCKS:
            raise UnsupportedModel(
                f"{name}: block {type(module).__name__} is not one whose rule is known "
                f"({', '.join(KNOWN)})")
        return _inline_block(name, module, router)
    if family in _SOFTMAX_ROUTERS:
        return _softmax_router_block(name, module, router)
    if family in _TOPK_SOFTMAX_ROUTERS:
        return _topk_softmax_block(name, module, router)
    if family in _GROUPED_SIGMOID_ROUTERS:
        return _grouped_sigmoid_block(name, module, router)
    raise UnsupportedModel(f"{name}: router {family} is not one whose rule is known "
                           f"({', '.join(KNOWN)})")


def _looks_like_moe(module):
    # Granite-MoE's experts are its input_linear and output_linear.
    has_experts = hasattr(module, "experts") or hasattr(module, "input_linear")
    return has_experts and router_of(module) is not None and \
        type(module).__name__ not in _RESIDENT_BLOCKS


def find_moe_blocks(model: nn.Module) -> List[MoeBlock]:
    """The model's sparse-MoE blocks in forward order (module order), each
    described; UnsupportedModel if one cannot be, or if there is none."""
    blocks = []
    for name, module in model.named_modules():
        if type(module).__name__ in _REFUSED and not _looks_like_moe(module):  # Doge's
            raise UnsupportedModel(f"{name}: {type(module).__name__}: "
                                   f"{_REFUSED[type(module).__name__]}")
        if _looks_like_moe(module) and not any(name.startswith(b.name + ".") for b in blocks):
            blocks.append(describe_block(name or type(model).__name__, module))
    if not blocks:
        raise UnsupportedModel(f"{type(model).__name__}: no sparse-MoE block (a module with "
                               f"a gate or router and experts) found")
    shapes = {(b.num_experts, b.top_k) for b in blocks}
    if len(shapes) != 1:
        raise UnsupportedModel(f"MoE blocks differ in (experts, top_k): {sorted(shapes)}")
    rules = {_rule_key(b.routing.rule) for b in blocks}
    if len(rules) != 1:
        raise UnsupportedModel(f"MoE blocks differ in routing rule: {sorted(rules)}")
    return blocks


def _rule_key(rule: dict) -> str:
    return ",".join(f"{k}={rule[k]}" for k in sorted(rule))
