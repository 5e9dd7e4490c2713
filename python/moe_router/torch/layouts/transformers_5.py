"""Transformers 5.x sparse-MoE blocks: a router module and fused expert
tensors run by the configured experts implementation. Read from
Transformers v5.2.0 (commit 7d9754a05193eb79b1d86aa744b622b8068008cd):
src/transformers/models/<family>/modeling_<family>.py and, for the experts
implementations, src/transformers/integrations/moe.py.
"""

import torch
from torch import nn
import torch.nn.functional as F

from moe_router.torch.layouts import MoeConfig
# Llama 4's block, ERNIE 4.5's MLP and statics, Hunyuan's gate and
# Granite-MoE's gating and experts are the same in both versions.
from moe_router.torch.layouts.transformers_4 import (DeepseekV2MLP, DeepseekV3MLP,
                                                     Ernie4_5_MoeMLP, Ernie4_5_MoeStatics,
                                                     HunYuanMoEV1Gate, HunYuanMoEV1MLP,
                                                     Llama4TextMoe, Qwen2MoeMLP, Qwen3NextMLP,
                                                     grouped_top_k)
from moe_router.torch.layouts.transformers_4 import GptOssExperts as GptOssExperts4
from moe_router.torch.layouts.transformers_4 import GptOssTopKRouter as GptOssTopKRouter4
from moe_router.torch.layouts.transformers_4 import GraniteMoeMoE as GraniteMoeMoE4


def _eager_experts(self, hidden_states, top_k_index, top_k_weights):
    """The experts class's own forward: experts in id order over their
    (top-k position, token) pairs, each output times its weight (in the
    weights' dtype), cast and index_add_-ed in the hidden dtype."""
    final = torch.zeros_like(hidden_states)
    with torch.no_grad():
        expert_mask = F.one_hot(top_k_index, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
    for expert_idx in expert_hit:
        expert_idx = expert_idx[0]
        top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
        current = hidden_states[token_idx]
        gate, up = F.linear(current, self.gate_up_proj[expert_idx]).chunk(2, dim=-1)
        out = F.linear(self.act_fn(gate) * up, self.down_proj[expert_idx])
        out = out * top_k_weights[token_idx, top_k_pos, None]
        final.index_add_(0, token_idx, out.to(final.dtype))
    return final


def _batched_linear(x, weight, bias, is_transposed):
    """integrations/moe.py _batched_linear."""
    if is_transposed:
        out = torch.bmm(x.unsqueeze(1), weight).squeeze(1)
    else:
        out = torch.bmm(weight, x.unsqueeze(-1)).squeeze(-1)
    if bias is not None:
        out = out + bias
    return out


def _batched_mm_experts(self, hidden_states, top_k_index, top_k_weights):
    """integrations/moe.py batched_mm_experts_forward: one (token, expert)
    sample per row, each expert's matrices (and biases) gathered per sample
    and applied with bmm, the class's _apply_gate between, weighted, summed
    over the top-k positions in their order."""
    num_top_k = top_k_index.size(-1)
    num_tokens, hidden_dim = hidden_states.size(0), hidden_states.size(-1)
    token_idx = torch.arange(num_tokens).unsqueeze(1).expand(-1, num_top_k).reshape(-1)
    sample_weights = top_k_weights.reshape(-1)
    expert_ids = top_k_index.reshape(-1)
    valid_mask = expert_ids < self.num_experts
    expert_ids = expert_ids.clamp(0, self.num_experts - 1)
    selected = hidden_states[token_idx]
    gate_up_bias = self.gate_up_proj_bias[expert_ids] if self.has_bias else None
    down_bias = self.down_proj_bias[expert_ids] if self.has_bias else None
    gate_up = _batched_linear(selected, self.gate_up_proj[expert_ids], gate_up_bias,
                              self.is_transposed)
    out = _batched_linear(self._apply_gate(gate_up), self.down_proj[expert_ids], down_bias,
                          self.is_transposed)
    out = out * sample_weights.unsqueeze(-1)
    out = out * valid_mask.unsqueeze(-1).to(out.dtype)
    return out.view(num_tokens, num_top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


def _grouped_mm_experts(self, hidden_states, top_k_index, top_k_weights):
    """integrations/moe.py grouped_mm_experts_forward needs PyTorch's grouped
    matrix multiply (2.9+); without it Transformers raises ImportError, and
    so does this reproduction."""
    if not hasattr(F, "grouped_mm") and not hasattr(torch, "_grouped_mm"):
        raise ImportError("Neither torch.nn.functional.grouped_mm nor torch._grouped_mm is "
                          "available")
    raise NotImplementedError("grouped_mm is reproduced only where PyTorch has it")


# What use_experts_implementation dispatches to besides the class's own
# forward ("eager").
EXPERTS_IMPLEMENTATIONS = {"batched_mm": _batched_mm_experts, "grouped_mm": _grouped_mm_experts}


def _dispatch(self, hidden_states, top_k_index, top_k_weights):
    """use_experts_implementation's forward: the configured implementation
    at each call, the class's own forward for "eager"."""
    name = self.config._experts_implementation
    if name != "eager" and name not in EXPERTS_IMPLEMENTATIONS:
        raise KeyError(f"`{name}` is not a valid experts implementation registered in the "
                       f"`ExpertsInterface`")
    implementation = EXPERTS_IMPLEMENTATIONS.get(name, type(self).eager_forward)
    return implementation(self, hidden_states, top_k_index, top_k_weights)


class _FusedExperts(nn.Module):
    """An experts class decorated with @use_experts_implementation: fused
    gate_up_proj (experts, 2 x inner, hidden; gate rows then up rows) and
    down_proj (experts, hidden, inner); forward dispatches on
    config._experts_implementation at each call."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.intermediate_dim = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(
            torch.empty(self.num_experts, 2 * self.intermediate_dim, self.hidden_dim))
        self.down_proj = nn.Parameter(
            torch.empty(self.num_experts, self.hidden_dim, self.intermediate_dim))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.uniform_(p, -p.shape[-1] ** -0.5, p.shape[-1] ** -0.5)
        self.act_fn = nn.SiLU()
        self.has_bias = False
        self.is_transposed = False

    def _apply_gate(self, gate_up):
        """integrations/moe.py _default_apply_gate."""
        gate, up = gate_up.chunk(2, dim=-1)
        return self.act_fn(gate) * up

    eager_forward = _eager_experts
    forward = _dispatch


class MixtralExperts(_FusedExperts):
    pass


class Qwen2MoeExperts(_FusedExperts):
    pass


class Qwen3MoeExperts(_FusedExperts):
    pass


class OlmoeExperts(_FusedExperts):
    pass


class Qwen3NextExperts(_FusedExperts):
    pass


class DeepseekV3NaiveMoe(_FusedExperts):
    pass


class _TopKRouter(nn.Module):
    """Qwen2-MoE, Qwen3-MoE, OLMoE and Qwen3-Next's router: the softmax of
    the logits in float32 (returned in the logits' place, and recorded as
    the router logits), its top-k, renormalised when norm_topk_prob.
    Returns (probabilities, top-k weights, top-k indices)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.norm_topk_prob = config.norm_topk_prob
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim))
        nn.init.normal_(self.weight, std=self.hidden_dim ** -0.5)

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight)
        router_logits = F.softmax(router_logits, dtype=torch.float, dim=-1)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        if self.norm_topk_prob:
            router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
        router_top_value = router_top_value.to(router_logits.dtype)
        return router_logits, router_top_value, router_indices


class MixtralTopKRouter(nn.Module):
    """Mixtral's: softmax(logits.float()), its top-k always renormalised."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim))
        nn.init.normal_(self.weight, std=self.hidden_dim ** -0.5)

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight)
        router_logits = F.softmax(router_logits.float(), dim=-1)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
        return router_logits, router_top_value, router_indices


class Qwen2MoeTopKRouter(_TopKRouter):
    pass


class Qwen3MoeTopKRouter(_TopKRouter):
    pass


class OlmoeTopKRouter(_TopKRouter):
    pass


class Qwen3NextTopKRouter(_TopKRouter):
    pass


class Qwen3_5MoeTopKRouter(_TopKRouter):
    """Qwen3.5-MoE's: the Qwen router with top-k always renormalised (it has
    no norm_topk_prob)."""

    def __init__(self, config: MoeConfig):
        super().__init__(config)
        del self.norm_topk_prob

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight)
        router_logits = F.softmax(router_logits, dtype=torch.float, dim=-1)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        router_top_value /= router_top_value.sum(dim=-1, keepdim=True)
        router_top_value = router_top_value.to(router_logits.dtype)
        return router_logits, router_top_value, router_indices


class Qwen3_5MoeExperts(_FusedExperts):
    pass


class _RouterBlock(nn.Module):
    """Mixtral, Qwen3-MoE and OLMoE's block: route, run the experts;
    returns the hidden states only."""

    router_class = None
    experts_class = None

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.gate = self.router_class(config)
        self.experts = self.experts_class(config)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        _, top_k_weights, top_k_index = self.gate(hidden_states)
        out = self.experts(hidden_states, top_k_index, top_k_weights)
        return out.reshape(batch_size, sequence_length, hidden_dim)


class MixtralSparseMoeBlock(_RouterBlock):
    router_class, experts_class = MixtralTopKRouter, MixtralExperts


class Qwen3MoeSparseMoeBlock(_RouterBlock):
    router_class, experts_class = Qwen3MoeTopKRouter, Qwen3MoeExperts


class OlmoeSparseMoeBlock(_RouterBlock):
    router_class, experts_class = OlmoeTopKRouter, OlmoeExperts


class _SharedExpertBlock(nn.Module):
    """Qwen2-MoE and Qwen3-Next: the shared expert first, then the routed
    experts, then the shared output gated by a sigmoid and added in place."""

    router_class = experts_class = mlp_class = None

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.gate = self.router_class(config)
        self.experts = self.experts_class(config)
        self.shared_expert = self.mlp_class(config, config.shared_expert_intermediate_size)
        self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        reshaped = hidden_states.view(-1, hidden_dim)
        shared = self.shared_expert(reshaped)
        _, routing_weights, selected_experts = self.gate(reshaped)
        out = self.experts(reshaped, selected_experts, routing_weights)
        shared = torch.sigmoid(self.shared_expert_gate(reshaped)) * shared
        out += shared
        return out.reshape(batch_size, sequence_length, hidden_dim)


class Qwen2MoeSparseMoeBlock(_SharedExpertBlock):
    router_class, experts_class, mlp_class = Qwen2MoeTopKRouter, Qwen2MoeExperts, Qwen2MoeMLP


class Qwen3NextSparseMoeBlock(_SharedExpertBlock):
    router_class, experts_class, mlp_class = Qwen3NextTopKRouter, Qwen3NextExperts, Qwen3NextMLP


class Qwen3_5MoeSparseMoeBlock(_SharedExpertBlock):
    router_class, experts_class, mlp_class = Qwen3_5MoeTopKRouter, Qwen3_5MoeExperts, Qwen3NextMLP


class DeepseekV3TopkRouter(nn.Module):
    """Only the float32 logits; the block routes."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.n_routed_experts = config.n_routed_experts
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, config.hidden_size)))
        nn.init.normal_(self.weight, std=config.hidden_size ** -0.5)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_routed_experts))

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, self.config.hidden_size)
        return F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))


class DeepseekV3MoE(nn.Module):
    """DeepSeek-V3's block in 5.x: route_tokens_to_experts holds the rule
    (4.x's router arithmetic, moved here), the fused experts compute, the
    shared experts are added."""

    router_class, experts_class = DeepseekV3TopkRouter, DeepseekV3NaiveMoe

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.experts = self.experts_class(config)
        self.gate = self.router_class(config)
        self.shared_experts = DeepseekV3MLP(
            config, config.moe_intermediate_size * config.n_shared_experts)
        self.n_routed_experts = config.n_routed_experts
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.routed_scaling_factor = config.routed_scaling_factor
        self.top_k = config.num_experts_per_tok

    def route_tokens_to_experts(self, router_logits):
        router_logits = router_logits.sigmoid()
        choice = router_logits + self.gate.e_score_correction_bias
        topk_indices = grouped_top_k(choice, self.n_group, self.topk_group, self.top_k)
        topk_weights = router_logits.gather(1, topk_indices)
        if self.norm_topk_prob:
            denominator = topk_weights.sum(dim=-1, keepdim=True) + 1e-20
            topk_weights /= denominator
        topk_weights = topk_weights * self.routed_scaling_factor
        return topk_indices, topk_weights

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        router_logits = self.gate(hidden_states)
        topk_indices, topk_weights = self.route_tokens_to_experts(router_logits)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.experts(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


class GptOssExperts(GptOssExperts4):
    """@use_experts_implementation(is_transposed=True, has_bias=True): 4.x's
    tensors (gate and up interleaved in (experts, hidden, 2 x inner), a bias
    for each, applied as x @ W + b); _apply_gate is the clamped SwiGLU. Its
    own forward is the "eager" implementation."""

    def __init__(self, config: MoeConfig):
        super().__init__(config)
        self.config = config
        self.has_bias = True
        self.is_transposed = True

    def _apply_gate(self, gate_up):
        gate, up = gate_up[..., ::2], gate_up[..., 1::2]
        gate = gate.clamp(min=None, max=self.limit)
        up = up.clamp(min=-self.limit, max=self.limit)
        glu = gate * torch.sigmoid(gate * self.alpha)
        return (up + 1) * glu

    def eager_forward(self, hidden_states, router_indices=None, routing_weights=None):
        next_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = F.one_hot(router_indices, num_classes=self.num_experts)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current = hidden_states[token_idx]
            gate_up = current @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
            out = self._apply_gate(gate_up) @ self.down_proj[expert_idx] + \
                self.down_proj_bias[expert_idx]
            weighted = out * routing_weights[token_idx, top_k_pos, None]
            next_states.index_add_(0, token_idx, weighted.to(hidden_states.dtype))
        return next_states

    forward = _dispatch


class GptOssTopKRouter(GptOssTopKRouter4):
    """4.x's weights; returns (logits, top-k weights, indices)."""

    def forward(self, hidden_states):
        router_logits = F.linear(hidden_states, self.weight, self.bias)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        router_scores = F.softmax(router_top_value, dim=1, dtype=router_top_value.dtype)
        return router_logits, router_scores, router_indices


class GptOssMLP(nn.Module):
    """Returns (hidden states, the top-k weights)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.router = GptOssTopKRouter(config)
        self.experts = GptOssExperts(config)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_dim)
        _, router_scores, router_indices = self.router(hidden_states)
        hidden_states = self.experts(hidden_states, router_indices, router_scores)
        return hidden_states.reshape(batch_size, sequence_length, hidden_dim), router_scores


class DeepseekV2Experts(_FusedExperts):
    pass


class DeepseekV2Moe(nn.Module):
    """DeepSeek-V2's block in 5.x: an nn.Linear gate applied in float32 to
    the (batch, tokens, hidden) input; route_tokens_to_experts takes those
    3-d logits. Reproduced with 5.2.0's defect: group_limited_greedy reads
    self.num_experts, which __init__ never sets (AttributeError)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.experts = DeepseekV2Experts(config)
        self.gate = nn.Linear(config.hidden_size, config.n_routed_experts, bias=False)
        nn.init.normal_(self.gate.weight, std=config.hidden_size ** -0.5)
        self.shared_experts = DeepseekV2MLP(
            config, config.moe_intermediate_size * config.n_shared_experts)
        self.routed_scaling_factor = config.routed_scaling_factor
        self.topk_method = config.topk_method
        self.num_group = config.n_group
        self.top_k = config.num_experts_per_tok
        self.topk_group = config.topk_group

    def route_tokens_to_experts(self, router_logits):
        batch_size, seq_len, hidden_dim = router_logits.shape
        router_logits = router_logits.view(-1, hidden_dim)
        router_logits = router_logits.softmax(dim=-1, dtype=torch.float32)
        if self.topk_method == "greedy":
            topk_weight, topk_idx = torch.topk(router_logits, k=self.top_k, dim=-1, sorted=False)
        elif self.topk_method == "group_limited_greedy":
            group_scores = router_logits.view(batch_size * seq_len, self.num_group, -1).max(
                dim=-1).values
            group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores)
            group_mask.scatter_(1, group_idx, 1)
            score_mask = group_mask.unsqueeze(-1).expand(
                batch_size * seq_len, self.num_group, self.num_experts // self.num_group).reshape(
                batch_size * seq_len, -1)
            tmp_scores = router_logits.masked_fill(~score_mask.bool(), 0.0)
            topk_weight, topk_idx = torch.topk(tmp_scores, k=self.top_k, dim=-1, sorted=False)
        topk_weight = topk_weight * self.routed_scaling_factor
        return topk_idx, topk_weight

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        router_logits = F.linear(hidden_states.type(torch.float32),
                                 self.gate.weight.type(torch.float32))
        topk_indices, topk_weights = self.route_tokens_to_experts(router_logits)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.experts(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


class JambaExperts(_FusedExperts):
    pass


class JambaSparseMoeBlock(nn.Module):
    """An nn.Linear `router` (its output recorded as the router logits);
    route_tokens_to_experts(hidden states, logits): softmax top-k, not
    renormalised, cast to the hidden dtype; fused experts."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_dim = config.hidden_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(self.hidden_dim, self.num_experts, bias=False)
        self.experts = JambaExperts(config)

    def route_tokens_to_experts(self, hidden_states, router_logits):
        routing_weights = F.softmax(router_logits, dim=-1, dtype=torch.float)
        top_k_weights, top_k_index = torch.topk(routing_weights, self.top_k, dim=-1)
        return top_k_index, top_k_weights.to(hidden_states.dtype)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.router(hidden_states)
        top_k_index, top_k_weights = self.route_tokens_to_experts(hidden_states, router_logits)
        hidden_states = self.experts(hidden_states, top_k_index, top_k_weights)
        return hidden_states.reshape(batch_size, sequence_length, hidden_dim)


class HunYuanMoEV1Experts(_FusedExperts):
    pass


class HunYuanMoEV1Moe(nn.Module):
    """The gate's logits; route_tokens_to_experts: softmax top-k,
    renormalised, cast to the logits' dtype; fused experts; the shared MLP on
    the input added at the end."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.top_k = config.moe_topk
        self.gate = HunYuanMoEV1Gate(config)
        self.experts = HunYuanMoEV1Experts(config)
        self.shared_mlp = HunYuanMoEV1MLP(config)

    def route_tokens_to_experts(self, hidden_states):
        routing_weights = F.softmax(hidden_states, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        return selected_experts, routing_weights.to(hidden_states.dtype)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states_mlp = self.shared_mlp(hidden_states)
        router_logits = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_dim)
        selected_experts, routing_weights = self.route_tokens_to_experts(router_logits)
        final_hidden_states = self.experts(hidden_states, selected_experts,
                                           routing_weights).reshape(batch_size, sequence_length,
                                                                    hidden_dim)
        return final_hidden_states + hidden_states_mlp


class MiniMaxM2Experts(_FusedExperts):
    pass


class MiniMaxM2TopKRouter(nn.Module):
    """Logits in the weight's dtype; sigmoid in float32; the choice on
    sigmoid + the block's bias (passed in), top-k unsorted; weights the
    unbiased sigmoids over their sum. Returns (logits, weights, indices)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim))
        nn.init.normal_(self.weight, std=self.hidden_dim ** -0.5)

    def forward(self, hidden_states, e_score_correction_bias):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states.to(self.weight.dtype), self.weight)
        routing_weights = torch.sigmoid(router_logits.float())
        scores_for_choice = routing_weights + e_score_correction_bias
        _, top_k_index = torch.topk(scores_for_choice, self.top_k, dim=-1, sorted=False)
        top_k_weights = routing_weights.gather(1, top_k_index)
        top_k_weights /= top_k_weights.sum(dim=-1, keepdim=True)
        return router_logits, top_k_weights, top_k_index


class MiniMaxM2SparseMoeBlock(nn.Module):
    """The bias is the block's buffer, handed to the router."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = MiniMaxM2TopKRouter(config)
        self.experts = MiniMaxM2Experts(config)
        self.register_buffer("e_score_correction_bias", torch.zeros(config.num_local_experts))

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        _, top_k_weights, top_k_index = self.gate(hidden_states, self.e_score_correction_bias)
        hidden_states = self.experts(hidden_states, top_k_index, top_k_weights)
        return hidden_states.reshape(batch_size, sequence_length, hidden_dim)


class AfmoeMLP(DeepseekV3MLP):
    pass


class AfmoeTokenChoiceRouter(nn.Module):
    """Sigmoid of float32 logits; the choice on sigmoid + the block's bias
    (passed in), top-k sorted; weights the unbiased sigmoids over their sum
    + 1e-20, times route_scale. Returns (weights, indices)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts
        self.route_scale = config.routed_scaling_factor
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)

    def forward(self, hidden_states, expert_bias):
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        scores = torch.sigmoid(self.gate(hidden_states).to(torch.float32))
        _, selected_experts = torch.topk(scores + expert_bias, k=self.top_k, dim=1)
        top_scores = scores.gather(dim=1, index=selected_experts)
        top_scores = top_scores / (top_scores.sum(dim=-1, keepdim=True) + 1e-20)
        return top_scores * self.route_scale, selected_experts


class AfmoeExperts(nn.ModuleList):
    """Per-expert modules; the (token, position) samples sorted by expert
    (stable), each expert on its run, the outputs weighted in float32, cast
    and scatter_add_-ed back. Takes and returns (batch, tokens, hidden)."""

    def __init__(self, config: MoeConfig):
        super().__init__(AfmoeMLP(config, config.moe_intermediate_size)
                         for _ in range(config.num_experts))
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_experts

    def forward(self, hidden_states, selected_experts, routing_weights):
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.view(-1, hidden_dim)
        top_k = selected_experts.shape[-1]
        token_indices = torch.arange(flat.shape[0]).repeat_interleave(top_k)
        expert_indices = selected_experts.reshape(-1)
        routing_weights = routing_weights.reshape(-1)
        sorting = torch.argsort(expert_indices, stable=True)
        token_indices = token_indices[sorting]
        expert_indices = expert_indices[sorting]
        routing_weights = routing_weights[sorting]
        dispatched = flat.index_select(0, token_indices)
        outputs = torch.zeros_like(dispatched)
        unique_experts, counts = torch.unique_consecutive(expert_indices, return_counts=True)
        start = 0
        for expert_id, count in zip(unique_experts.tolist(), counts.tolist()):
            end = start + count
            outputs[start:end] = self[expert_id](dispatched[start:end])
            start = end
        weighted = (outputs.to(torch.float32) * routing_weights.unsqueeze(-1)).to(flat.dtype)
        aggregated = torch.zeros_like(flat)
        aggregated.scatter_add_(0, token_indices.unsqueeze(-1).expand_as(weighted), weighted)
        return aggregated.view(batch_size, seq_len, hidden_dim)


class AfmoeMoE(nn.Module):
    """AFMoE (5.x only): the router given the block's expert_bias, shared
    experts, the routed experts."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.router = AfmoeTokenChoiceRouter(config)
        self.shared_experts = AfmoeMLP(config, config.moe_intermediate_size *
                                       config.n_shared_experts)
        self.experts = AfmoeExperts(config)
        self.expert_bias = nn.Parameter(torch.zeros(config.num_experts), requires_grad=False)

    def forward(self, hidden_states):
        batch_size, seq_len, hidden_dim = hidden_states.shape
        flat = hidden_states.view(-1, hidden_dim)
        top_scores, selected_experts = self.router(hidden_states, self.expert_bias)
        top_scores = top_scores.view(batch_size, seq_len, self.config.num_experts_per_tok)
        selected_experts = selected_experts.view(batch_size, seq_len,
                                                 self.config.num_experts_per_tok)
        shared = self.shared_experts(flat).view(batch_size, seq_len, hidden_dim)
        return shared + self.experts(hidden_states, selected_experts, top_scores)


class Lfm2MoeExperts(_FusedExperts):
    pass


class Lfm2MoeSparseMoeBlock(nn.Module):
    """LFM2-MoE (5.x only): an nn.Linear gate in the model's dtype;
    route_tokens_to_experts: the sigmoid in the logits' dtype, the choice on
    it plus the float32 expert_bias (when use_expert_bias), top-k sorted;
    weights over their sum + 1e-6 (norm_topk_prob), times
    routed_scaling_factor; fused experts."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.routed_scaling_factor = config.routed_scaling_factor
        self.norm_topk_prob = config.norm_topk_prob
        self.use_expert_bias = config.use_expert_bias
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Lfm2MoeExperts(config)
        if self.use_expert_bias:
            self.register_buffer("expert_bias", torch.zeros(config.num_experts,
                                                            dtype=torch.float32))

    def route_tokens_to_experts(self, router_logits):
        routing_weights = router_logits.sigmoid()
        if self.use_expert_bias:
            scores_for_routing = routing_weights + self.expert_bias
            _, selected_experts = torch.topk(scores_for_routing, k=self.top_k, dim=-1)
            routing_weights = torch.gather(routing_weights, dim=1,
                                           index=selected_experts).type_as(router_logits)
        else:
            routing_weights, selected_experts = torch.topk(routing_weights, k=self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights = routing_weights / (routing_weights.sum(dim=-1, keepdim=True) + 1e-6)
        routing_weights = routing_weights * self.routed_scaling_factor
        return selected_experts, routing_weights

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states_reshaped = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states_reshaped)
        selected_experts, routing_weights = self.route_tokens_to_experts(router_logits)
        final_hidden_states = self.experts(hidden_states_reshaped, selected_experts,
                                           routing_weights)
        return final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)


class Ernie4_5_MoeExperts(_FusedExperts):
    pass


class Ernie4_5_MoeTopKRouter(nn.Module):
    """Float32 logits of the float32 input; softmax in float32; the choice on
    it plus moe_statics' bias (top-k sorted); weights the unbiased
    probabilities over max(sum, moe_norm_min), cast to the hidden dtype.
    Returns (logits, indices, weights)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(config.moe_num_experts, config.hidden_size,
                                               dtype=torch.float32))
        nn.init.normal_(self.weight, std=config.hidden_size ** -0.5)
        self.moe_statics = Ernie4_5_MoeStatics(config)
        self.top_k = config.moe_k
        self.norm_min = config.moe_norm_min

    def forward(self, hidden_states):
        router_logits = F.linear(hidden_states.float(), self.weight.float())
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        _, selected_experts = torch.topk(self.moe_statics(routing_weights), self.top_k, dim=-1)
        routing_weights = torch.gather(routing_weights, dim=-1, index=selected_experts)
        routing_weights = routing_weights / torch.clamp(
            routing_weights.sum(dim=-1, keepdim=True), min=self.norm_min)
        routing_weights = routing_weights.to(hidden_states.dtype)
        return router_logits, selected_experts, routing_weights


class Ernie4_5_MoeSparseMoeBlock(nn.Module):
    """The shared experts computed first, the routed experts, the sum cast to
    the hidden dtype."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_dim = config.hidden_size
        self.num_experts = config.moe_num_experts
        self.top_k = config.moe_k
        self.gate = Ernie4_5_MoeTopKRouter(config)
        self.experts = Ernie4_5_MoeExperts(config)
        self.shared_experts = None
        if config.moe_num_shared_experts > 0:
            self.shared_experts = Ernie4_5_MoeMLP(
                config, config.moe_intermediate_size * config.moe_num_shared_experts)

    def forward(self, hidden_states):
        batch_size, sequence_length, _ = hidden_states.shape
        hidden_states = hidden_states.view(-1, self.hidden_dim)
        if self.shared_experts is not None:
            shared_output = self.shared_experts(hidden_states)
        _, top_k_index, top_k_weights = self.gate(hidden_states)
        final_hidden_states = self.experts(hidden_states, top_k_index, top_k_weights)
        if self.shared_experts is not None:
            final_hidden_states = final_hidden_states + shared_output
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length,
                                                          self.hidden_dim)
        return final_hidden_states.to(hidden_states.dtype)


class GraniteMoeMoE(GraniteMoeMoE4):
    """4.57.6's block (its gating and ParallelExperts unchanged), returning
    the hidden states alone."""

    def forward(self, layer_input):
        return super().forward(layer_input)[0]


# GLM-4.5 (glm4_moe) and dots.llm1 (dots1): DeepSeek-V3's router, experts
# and block under other names (their modeling files at 5.2.0 differ from
# DeepSeek-V3's in these classes only by names and type annotations).
class Glm4MoeTopkRouter(DeepseekV3TopkRouter):
    pass


class Glm4MoeNaiveMoe(DeepseekV3NaiveMoe):
    pass


class Glm4MoeMoE(DeepseekV3MoE):
    router_class, experts_class = Glm4MoeTopkRouter, Glm4MoeNaiveMoe


class Dots1TopkRouter(DeepseekV3TopkRouter):
    pass


class Dots1NaiveMoe(DeepseekV3NaiveMoe):
    pass


class Dots1MoE(DeepseekV3MoE):
    router_class, experts_class = Dots1TopkRouter, Dots1NaiveMoe


# The modules whose output at this index (or whole) the models record as
# router logits when asked (`_can_record_outputs`, a forward hook on each
# instance); a (class, name) key: modules of that class under that
# attribute name (Jamba's OutputRecorder(nn.Linear, layer_name="router")).
ROUTER_LOGITS_RECORDED_FROM = {
    MixtralTopKRouter: 0, Qwen2MoeTopKRouter: 0, Qwen3MoeTopKRouter: 0, OlmoeTopKRouter: 0,
    Qwen3NextTopKRouter: 0, Qwen3_5MoeTopKRouter: 0, GptOssTopKRouter: 0, Llama4TextMoe: 1,
    MiniMaxM2TopKRouter: 0, Ernie4_5_MoeTopKRouter: 0, (nn.Linear, "router"): "output",
}
