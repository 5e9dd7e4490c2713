"""Transformers 4.x sparse-MoE blocks: per-expert modules in an
nn.ModuleList, routing written inline in the block (or, for DeepSeek-V3,
in its router). Read from Transformers v4.57.6 (commit
753d61104116eefc8ffc977327b441ee0c8d599f), src/transformers/models/<family>/
modeling_<family>.py.
"""

import torch
from torch import nn
import torch.nn.functional as F

from moe_router.torch.layouts import MoeConfig


class _GluMlp(nn.Module):
    """An expert or dense MLP: down(act(gate(x)) * up(x)), no biases."""

    def __init__(self, config: MoeConfig, intermediate_size=None):
        super().__init__()
        inner = config.intermediate_size if intermediate_size is None else intermediate_size
        self.gate_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, inner, bias=False)
        self.down_proj = nn.Linear(inner, config.hidden_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Qwen2MoeMLP(_GluMlp):
    pass


class Qwen3MoeMLP(_GluMlp):
    pass


class Qwen3NextMLP(_GluMlp):
    pass


class OlmoeMLP(_GluMlp):
    def __init__(self, config: MoeConfig):
        super().__init__(config, config.moe_intermediate_size)


class DeepseekV3MLP(_GluMlp):
    pass


class MixtralBlockSparseTop2MLP(nn.Module):
    """modeling_mixtral.py: w2(act(w1(x)) * w3(x))."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.moe_intermediate_size, bias=False)
        self.w2 = nn.Linear(config.moe_intermediate_size, config.hidden_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.moe_intermediate_size, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states):
        return self.w2(self.act_fn(self.w1(hidden_states)) * self.w3(hidden_states))


class PhimoeBlockSparseTop2MLP(MixtralBlockSparseTop2MLP):
    pass


class _SoftmaxTopKBlock(nn.Module):
    """The block Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE and Qwen3-Next share in
    4.x: a softmax over the gate logits in float32, its top-k, renormalised
    (always for Mixtral; per norm_topk_prob for the others), the weights cast
    to the hidden dtype; experts taken in id order, each over its (top-k
    position, token) pairs, accumulated with index_add_ in the hidden dtype.
    Returns (hidden states, router logits)."""

    always_normalize = False
    expert_class = None
    shared = False

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        if not self.always_normalize:
            self.norm_topk_prob = config.norm_topk_prob
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList([self._expert(config) for _ in range(self.num_experts)])
        if self.shared:
            self.shared_expert = self.expert_class(config, config.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)

    def _expert(self, config):
        if self.expert_class in (MixtralBlockSparseTop2MLP, PhimoeBlockSparseTop2MLP, OlmoeMLP):
            return self.expert_class(config)
        return self.expert_class(config, config.moe_intermediate_size)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.always_normalize or self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final = torch.zeros((batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype,
                            device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
            current = hidden_states[None, top_x].reshape(-1, hidden_dim)
            out = self.experts[expert_idx](current) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, out.to(hidden_states.dtype))
        if self.shared:
            shared = self.shared_expert(hidden_states)
            shared = torch.sigmoid(self.shared_expert_gate(hidden_states)) * shared
            final = final + shared
        return final.reshape(batch_size, sequence_length, hidden_dim), router_logits


class MixtralSparseMoeBlock(_SoftmaxTopKBlock):
    always_normalize = True
    expert_class = MixtralBlockSparseTop2MLP


class Qwen2MoeSparseMoeBlock(_SoftmaxTopKBlock):
    expert_class = Qwen2MoeMLP
    shared = True


class Qwen3MoeSparseMoeBlock(_SoftmaxTopKBlock):
    expert_class = Qwen3MoeMLP


class OlmoeSparseMoeBlock(_SoftmaxTopKBlock):
    expert_class = OlmoeMLP


class Qwen3NextSparseMoeBlock(_SoftmaxTopKBlock):
    expert_class = Qwen3NextMLP
    shared = True


class PhimoeSparseMoeBlock(_SoftmaxTopKBlock):
    """Phi-3.5-MoE: Mixtral's shapes, routed by `sparsemixer` (not
    reproduced: moe_router.torch refuses this block by name, and a test
    checks that)."""
    always_normalize = True
    expert_class = PhimoeBlockSparseTop2MLP

    def forward(self, hidden_states):
        raise NotImplementedError("sparsemixer routing is not reproduced here")


def grouped_top_k(choice, n_group, topk_group, top_k):
    """DeepSeek-V3's choice (the same steps in 4.x's router and 5.x's
    block): the best topk_group groups by their two best biased scores
    summed, the other groups' experts masked with 0.0, top-k unsorted."""
    experts = choice.shape[-1]
    per_group = experts // n_group
    group_scores = choice.view(-1, n_group, per_group).topk(2, dim=-1)[0].sum(dim=-1)
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    score_mask = group_mask.unsqueeze(-1).expand(-1, n_group, per_group).reshape(-1, experts)
    choice = choice.masked_fill(~score_mask.bool(), 0.0)
    return torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]


class DeepseekV3TopkRouter(nn.Module):
    """Sigmoid scores from float32 logits; the choice on score + bias within
    the best topk_group of n_group groups (a group's score: its two best
    biased scores summed; other groups masked with 0.0), top-k unsorted;
    weights the unbiased scores, over their sum + 1e-20 when
    norm_topk_prob, times routed_scaling_factor. Returns (indices,
    weights), both per token."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.n_routed_experts = config.n_routed_experts
        self.routed_scaling_factor = config.routed_scaling_factor
        self.n_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty((self.n_routed_experts, config.hidden_size)))
        nn.init.normal_(self.weight, std=config.hidden_size ** -0.5)
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_routed_experts))

    @torch.no_grad()
    def get_topk_indices(self, scores):
        choice = scores.view(-1, self.n_routed_experts) + self.e_score_correction_bias.unsqueeze(0)
        return grouped_top_k(choice, self.n_group, self.topk_group, self.top_k)

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, self.config.hidden_size)
        router_logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32))
        scores = router_logits.sigmoid()
        topk_indices = self.get_topk_indices(scores)
        topk_weights = scores.gather(1, topk_indices)
        if self.norm_topk_prob:
            denominator = topk_weights.sum(dim=-1, keepdim=True) + 1e-20
            topk_weights /= denominator
        topk_weights = topk_weights * self.routed_scaling_factor
        return topk_indices, topk_weights


class DeepseekV3MoE(nn.Module):
    """Routed experts accumulated in float32 (the weights' dtype) over every
    expert in id order, each over its (token, top-k position) pairs, cast to
    the hidden dtype; plus the shared experts on the block's input."""

    router_class = DeepseekV3TopkRouter

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.experts = nn.ModuleList([DeepseekV3MLP(config, config.moe_intermediate_size)
                                      for _ in range(config.n_routed_experts)])
        self.gate = self.router_class(config)
        self.shared_experts = DeepseekV3MLP(
            config, config.moe_intermediate_size * config.n_shared_experts)

    def moe(self, hidden_states, topk_indices, topk_weights):
        final = torch.zeros_like(hidden_states, dtype=topk_weights.dtype)
        expert_mask = F.one_hot(topk_indices, num_classes=len(self.experts)).permute(2, 0, 1)
        for expert_idx in range(len(self.experts)):
            token_indices, weight_indices = torch.where(expert_mask[expert_idx])
            if token_indices.numel() > 0:
                expert_weights = topk_weights[token_indices, weight_indices]
                out = self.experts[expert_idx](hidden_states[token_indices])
                final.index_add_(0, token_indices, out * expert_weights.unsqueeze(-1))
        return final.type(hidden_states.dtype)

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        topk_indices, topk_weights = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.moe(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


class GptOssExperts(nn.Module):
    """gate_up_proj (experts, hidden, 2 x inner; gate and up interleaved),
    down_proj (experts, inner, hidden), a bias for each; the clamped
    SwiGLU. Takes the hidden states as the block got them and the routing
    weights scattered over all experts. Only the branch 4.57.6 runs on the
    CPU (and in training) is reproduced: elsewhere it computes every expert
    for every token with bmm."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        inner = config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_size, 2 * inner))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(self.num_experts, 2 * inner))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, inner, self.hidden_size))
        self.down_proj_bias = nn.Parameter(torch.empty(self.num_experts, self.hidden_size))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.uniform_(p, -p.shape[1] ** -0.5, p.shape[1] ** -0.5)
        for p in (self.gate_up_proj_bias, self.down_proj_bias):
            nn.init.normal_(p, std=0.02)
        self.alpha = 1.702
        self.limit = 7.0

    def forward(self, hidden_states, router_indices=None, routing_weights=None):
        if hidden_states.device.type != "cpu" and not self.training:
            raise NotImplementedError("4.57.6's dense accelerator branch is not reproduced")
        batch_size = hidden_states.shape[0]
        hidden_states = hidden_states.reshape(-1, self.hidden_size)
        num_experts = routing_weights.shape[1]
        next_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = F.one_hot(router_indices, num_classes=num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit[:]:
            expert_idx = expert_idx[0]
            if expert_idx == num_experts:
                continue
            with torch.no_grad():
                _, token_idx = torch.where(expert_mask[expert_idx])
            current = hidden_states[token_idx]
            gate_up = current @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            gate = gate.clamp(min=None, max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
            glu = gate * torch.sigmoid(gate * self.alpha)
            out = ((up + 1) * glu) @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
            weighted = out * routing_weights[token_idx, expert_idx, None]
            next_states.index_add_(0, token_idx, weighted.to(hidden_states.dtype))
        return next_states.view(batch_size, -1, self.hidden_size)


class GptOssTopKRouter(nn.Module):
    """Logits with a bias; their top-k; the softmax of those k in the
    logits' dtype, scattered over all experts. Returns (those weights,
    indices)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.num_local_experts
        self.hidden_dim = config.hidden_size
        self.weight = nn.Parameter(torch.empty(self.num_experts, self.hidden_dim))
        self.bias = nn.Parameter(torch.empty(self.num_experts))
        nn.init.normal_(self.weight, std=self.hidden_dim ** -0.5)
        nn.init.normal_(self.bias, std=0.1)

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_logits = F.linear(hidden_states, self.weight, self.bias)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=-1)
        router_top_value = F.softmax(router_top_value, dim=1, dtype=router_top_value.dtype)
        router_scores = torch.zeros_like(router_logits).scatter_(1, router_indices,
                                                                 router_top_value)
        return router_scores, router_indices


class GptOssMLP(nn.Module):
    """Returns (hidden states, the routing weights over all experts)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.router = GptOssTopKRouter(config)
        self.experts = GptOssExperts(config)

    def forward(self, hidden_states):
        router_scores, router_indices = self.router(hidden_states)
        routed_out = self.experts(hidden_states, router_indices=router_indices,
                                  routing_weights=router_scores)
        return routed_out, router_scores


class DeepseekV2MLP(_GluMlp):
    pass


class DeepseekV2MoEGate(nn.Module):
    """Softmax of float32 logits; greedy: its top-k; group_limited_greedy:
    the best topk_group of n_group groups by their best probability, the
    others masked with 0.0, then top-k (unsorted both); weights the top-k
    values times routed_scaling_factor. Returns (indices, weights)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.top_k = config.num_experts_per_tok
        self.num_experts = config.n_routed_experts
        self.routed_scaling_factor = config.routed_scaling_factor
        self.topk_method = config.topk_method
        self.num_group = config.n_group
        self.topk_group = config.topk_group
        self.norm_topk_prob = config.norm_topk_prob
        self.weight = nn.Parameter(torch.empty((self.num_experts, config.hidden_size)))
        nn.init.normal_(self.weight, std=config.hidden_size ** -0.5)

    def forward(self, hidden_states):
        batch_size, seq_len, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        logits = F.linear(hidden_states.type(torch.float32), self.weight.type(torch.float32), None)
        scores = logits.softmax(dim=-1, dtype=torch.float32)
        if self.topk_method == "greedy":
            topk_weight, topk_idx = torch.topk(scores, k=self.top_k, dim=-1, sorted=False)
        elif self.topk_method == "group_limited_greedy":
            group_scores = scores.view(batch_size * seq_len, self.num_group, -1).max(dim=-1).values
            group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
            group_mask = torch.zeros_like(group_scores)
            group_mask.scatter_(1, group_idx, 1)
            score_mask = group_mask.unsqueeze(-1).expand(
                batch_size * seq_len, self.num_group, self.num_experts // self.num_group).reshape(
                batch_size * seq_len, -1)
            tmp_scores = scores.masked_fill(~score_mask.bool(), 0.0)
            topk_weight, topk_idx = torch.topk(tmp_scores, k=self.top_k, dim=-1, sorted=False)
        topk_weight = topk_weight * self.routed_scaling_factor
        return topk_idx, topk_weight


class DeepseekV2MoE(nn.Module):
    """`moe`: the (token, position) samples sorted by expert (argsort), each
    expert on its run of them, the outputs put back in sample order, then
    per token times its weights in the weights' dtype and summed over the
    positions; plus the shared experts."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.num_experts_per_tok = config.num_experts_per_tok
        self.experts = nn.ModuleList([DeepseekV2MLP(config, config.moe_intermediate_size)
                                      for _ in range(config.n_routed_experts)])
        self.gate = DeepseekV2MoEGate(config)
        self.shared_experts = DeepseekV2MLP(
            config, config.moe_intermediate_size * config.n_shared_experts)

    def moe(self, hidden_states, topk_ids, topk_weight):
        cnts = topk_ids.new_zeros((topk_ids.shape[0], len(self.experts)))
        cnts.scatter_(1, topk_ids, 1)
        tokens_per_expert = cnts.sum(dim=0)
        indices = topk_ids.view(-1).argsort()
        sorted_tokens = hidden_states[indices // topk_ids.shape[1]]
        outputs, start_idx = [], 0
        for i, num_tokens in enumerate(tokens_per_expert):
            if num_tokens == 0:
                continue
            end_idx = start_idx + num_tokens
            outputs.append(self.experts[i](sorted_tokens[start_idx:end_idx]))
            start_idx = end_idx
        outs = torch.cat(outputs, dim=0) if outputs else sorted_tokens.new_empty(0)
        new_x = torch.empty_like(outs)
        new_x[indices] = outs
        return (new_x.view(*topk_ids.shape, -1).type(topk_weight.dtype)
                .mul_(topk_weight.unsqueeze(dim=-1)).sum(dim=1).type(new_x.dtype))

    def forward(self, hidden_states):
        residuals = hidden_states
        orig_shape = hidden_states.shape
        topk_indices, topk_weights = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        hidden_states = self.moe(hidden_states, topk_indices, topk_weights).view(*orig_shape)
        return hidden_states + self.shared_experts(residuals)


class JambaMLP(_GluMlp):
    pass


class JambaSparseMoeBlock(nn.Module):
    """Routes inline with an nn.Linear `router`: softmax top-k, not
    renormalised, cast to the hidden dtype; every expert id in turn, those
    with tokens index_add_-ed. Returns (hidden states, router logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_dim = config.hidden_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(self.hidden_dim, self.num_experts, bias=False)
        self.experts = nn.ModuleList([JambaMLP(config) for _ in range(self.num_experts)])

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.router(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros((batch_size * sequence_length, hidden_dim),
                                          dtype=hidden_states.dtype, device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        for expert_idx in range(self.num_experts):
            idx, top_x = torch.where(expert_mask[expert_idx])
            if top_x.shape[0] == 0:
                continue
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current = self.experts[expert_idx](current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current.to(hidden_states.dtype))
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return final_hidden_states, router_logits


class HunYuanMoEV1MLP(_GluMlp):
    pass


class HunYuanMoEV1Gate(nn.Module):
    """`wg`, a float32 nn.Linear applied to the float32 input: the logits.
    The same at 4.57.6 and 5.2.0."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.wg = nn.Linear(config.hidden_size, config.num_experts, bias=False,
                            dtype=torch.float32)

    def forward(self, hidden_states):
        bsz, seq_len, hidden_size = hidden_states.shape
        hidden_states = hidden_states.reshape(-1, hidden_size)
        if self.wg.weight.dtype == torch.float32:
            hidden_states = hidden_states.float()
        return self.wg(hidden_states)


class HunYuanMoEV1Moe(nn.Module):
    """Routes inline: softmax top-k of the gate's logits, renormalised, cast
    to the hidden dtype; experts in id order; the shared MLP on the input
    added at the end."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.config = config
        self.num_experts = config.num_experts
        self.top_k = config.moe_topk
        self.gate = HunYuanMoEV1Gate(config)
        self.experts = nn.ModuleList([HunYuanMoEV1MLP(config) for _ in range(self.num_experts)])
        self.shared_mlp = HunYuanMoEV1MLP(config)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states_mlp = self.shared_mlp(hidden_states)
        router_logits = self.gate(hidden_states)
        hidden_states = hidden_states.view(-1, hidden_dim)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros((batch_size * sequence_length, hidden_dim),
                                          dtype=hidden_states.dtype, device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current.to(hidden_states.dtype))
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return final_hidden_states + hidden_states_mlp


class Ernie4_5_MoeMLP(_GluMlp):
    pass  # (use_bias=False, as ERNIE 4.5's checkpoints have it)


class Ernie4_5_MoeStatics(nn.Module):
    """The choice bias, one row: (1, experts) float32, added squeezed."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.e_score_correction_bias = nn.Parameter(
            torch.zeros(1, config.moe_num_experts, dtype=torch.float32), requires_grad=False)

    def forward(self, hidden_states):
        return hidden_states + self.e_score_correction_bias.squeeze()


class Ernie4_5_MoeSparseMoeBlock(nn.Module):
    """Routes inline: a float32 nn.Linear gate on the float32 input, softmax
    in float32, the choice on it plus moe_statics' bias (top-k sorted),
    weights the unbiased probabilities over max(sum, moe_norm_min) cast to
    the hidden dtype; experts in id order, index_add_-ed; the shared experts
    (computed first) added. Returns (hidden states, router logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.moe_num_experts
        self.top_k = config.moe_k
        self.moe_statics = Ernie4_5_MoeStatics(config)
        self.gate = nn.Linear(config.hidden_size, config.moe_num_experts, bias=False,
                              dtype=torch.float32)
        self.experts = nn.ModuleList([Ernie4_5_MoeMLP(config, config.moe_intermediate_size)
                                      for _ in range(config.moe_num_experts)])
        self.norm_min = config.moe_norm_min
        self.shared_experts = None
        if config.moe_num_shared_experts > 0:
            self.shared_experts = Ernie4_5_MoeMLP(
                config, config.moe_intermediate_size * config.moe_num_shared_experts)

    def forward(self, hidden_states):
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        if self.shared_experts is not None:
            shared_output = self.shared_experts(hidden_states)
        router_logits = self.gate(hidden_states.float())
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        _, selected_experts = torch.topk(self.moe_statics(routing_weights), self.top_k, dim=-1)
        routing_weights = torch.gather(routing_weights, dim=-1, index=selected_experts)
        routing_weights = routing_weights / torch.clamp(
            routing_weights.sum(dim=-1, keepdim=True), min=self.norm_min)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final_hidden_states = torch.zeros((batch_size * sequence_length, hidden_dim),
                                          dtype=hidden_states.dtype, device=hidden_states.device)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            expert_layer = self.experts[expert_idx]
            idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
            current_state = hidden_states[None, top_x].reshape(-1, hidden_dim)
            current = expert_layer(current_state) * routing_weights[top_x, idx, None]
            final_hidden_states.index_add_(0, top_x, current.to(hidden_states.dtype))
        if self.shared_experts is not None:
            final_hidden_states = final_hidden_states + shared_output
        final_hidden_states = final_hidden_states.reshape(batch_size, sequence_length, hidden_dim)
        return final_hidden_states, router_logits


class Llama4TextExperts(nn.Module):
    """gate_up_proj (experts, hidden, 2 x inner; gate then up), down_proj
    (experts, inner, hidden); every expert runs on its slice of the inputs
    (experts x tokens rows) by bmm. The same at 4.57.6 and 5.2.0."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.num_local_experts
        self.hidden_size = config.hidden_size
        inner = config.intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_size, 2 * inner))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, inner, self.hidden_size))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.uniform_(p, -p.shape[1] ** -0.5, p.shape[1] ** -0.5)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(self.gate_up_proj.shape[0], -1, self.hidden_size)
        gate_up = torch.bmm(hidden_states, self.gate_up_proj)
        gate, up = gate_up.chunk(2, dim=-1)
        next_states = torch.bmm((up * self.act_fn(gate)), self.down_proj)
        return next_states.view(-1, self.hidden_size)


class Llama4TextMLP(_GluMlp):
    pass


class Llama4Router(nn.Linear):
    """Top-k of the logits; the chosen logits' sigmoid (in float32, cast
    back) scattered over all experts (sigmoid(-inf) = 0 elsewhere).
    Returns (those weights, logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__(config.hidden_size, config.num_local_experts, bias=False)
        self.num_experts = config.num_local_experts
        self.top_k = config.num_experts_per_tok

    def forward(self, hidden_states):
        router_logits = super().forward(hidden_states)
        router_top_value, router_indices = torch.topk(router_logits, self.top_k, dim=1)
        router_scores = torch.full_like(router_logits, float("-inf")).scatter_(
            1, router_indices, router_top_value)
        router_scores = torch.sigmoid(router_scores.float()).to(router_scores.dtype)
        return router_scores, router_logits


class Llama4TextMoe(nn.Module):
    """Every expert on every token's input times its weight, summed over the
    experts, added in place to the shared expert's output. Returns (hidden
    states, router logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.hidden_dim = config.hidden_size
        self.num_experts = config.num_local_experts
        self.experts = Llama4TextExperts(config)
        self.router = Llama4Router(config)
        self.shared_expert = Llama4TextMLP(config)

    def forward(self, hidden_states):
        hidden_states = hidden_states.reshape(-1, self.hidden_dim)
        router_scores, router_logits = self.router(hidden_states)
        routed_in = hidden_states.repeat(router_scores.shape[1], 1)
        routed_in = routed_in * router_scores.transpose(0, 1).reshape(-1, 1)
        routed_out = self.experts(routed_in)
        out = self.shared_expert(hidden_states)
        out.add_(routed_out.reshape(router_scores.shape[1], -1, routed_out.shape[-1]).sum(dim=0))
        return out, router_logits


class GraniteMoeParallelExperts(nn.Module):
    """weight (experts, out, in); forward(inputs, expert_size): the inputs
    split in runs per expert, each through its matrix, concatenated."""

    def __init__(self, num_experts, input_size, output_size):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, output_size, input_size))
        nn.init.uniform_(self.weight, -input_size ** -0.5, input_size ** -0.5)
        self.num_experts = num_experts

    def forward(self, inputs, expert_size):
        input_list = inputs.split(expert_size, dim=0)
        return torch.cat([F.linear(input_list[i], self.weight[i])
                          for i in range(self.num_experts)], dim=0)


class GraniteMoeTopKGating(nn.Module):
    """Float32 logits of `layer`; their top-k; softmax over those cast to the
    hidden dtype; the samples sorted by expert. Returns (sorted sample
    indices, their tokens, their weights, samples per expert, logits)."""

    def __init__(self, input_size, num_experts, top_k):
        super().__init__()
        self.num_experts = num_experts
        self.input_size = input_size
        self.top_k = top_k
        self.layer = nn.Linear(input_size, num_experts, bias=False)

    def forward(self, hidden_states):
        logits = self.layer(hidden_states).float()
        top_k_logits, top_k_indices = logits.topk(self.top_k, dim=1)
        top_k_gates = torch.softmax(top_k_logits, dim=1).type_as(hidden_states)
        zeros = torch.zeros([top_k_gates.size(0), self.num_experts], dtype=top_k_gates.dtype,
                            device=top_k_gates.device)
        gates = zeros.scatter(1, top_k_indices, 1)
        expert_size = gates.long().sum(0).tolist()
        top_k_experts = top_k_indices.flatten()
        _, index_sorted_experts = top_k_experts.sort(0)
        batch_index = index_sorted_experts.div(self.top_k, rounding_mode="trunc")
        batch_gates = top_k_gates.flatten()[index_sorted_experts]
        return index_sorted_experts, batch_index, batch_gates, expert_size, logits


class GraniteMoeMoE(nn.Module):
    """The sorted samples through input_linear, act(gate) * up, output_linear,
    times their weights, index_add-ed per token. Returns (hidden states, router logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.input_size = config.hidden_size
        self.hidden_size = config.intermediate_size
        self.activation = nn.SiLU()
        self.input_linear = GraniteMoeParallelExperts(config.num_local_experts, self.input_size,
                                                      self.hidden_size * 2)
        self.output_linear = GraniteMoeParallelExperts(config.num_local_experts,
                                                       self.hidden_size, self.input_size)
        self.router = GraniteMoeTopKGating(self.input_size, config.num_local_experts,
                                           config.num_experts_per_tok)

    def forward(self, layer_input):
        bsz, length, emb_size = layer_input.size()
        layer_input = layer_input.reshape(-1, emb_size)
        _, batch_index, batch_gates, expert_size, router_logits = self.router(layer_input)
        expert_inputs = layer_input[batch_index]
        hidden_states = self.input_linear(expert_inputs, expert_size)
        chunked = hidden_states.chunk(2, dim=-1)
        hidden_states = self.activation(chunked[0]) * chunked[1]
        expert_outputs = self.output_linear(hidden_states, expert_size)
        expert_outputs = expert_outputs * batch_gates[:, None]
        zeros = torch.zeros((bsz * length, self.input_size), dtype=expert_outputs.dtype,
                            device=expert_outputs.device)
        layer_output = zeros.index_add(0, batch_index, expert_outputs)
        layer_output = layer_output.view(bsz, length, self.input_size)
        return layer_output, router_logits


# GLM-4.5 (glm4_moe) and dots.llm1 (dots1) are DeepSeek-V3's router and
# block under other names: their modeling files at 4.57.6 differ from
# DeepSeek-V3's in these classes only by names and type annotations.
class Glm4MoeTopkRouter(DeepseekV3TopkRouter):
    pass


class Glm4MoeMoE(DeepseekV3MoE):
    router_class = Glm4MoeTopkRouter


class Dots1TopkRouter(DeepseekV3TopkRouter):
    pass


class Dots1MoE(DeepseekV3MoE):
    router_class = Dots1TopkRouter


class DbrxRouter(nn.Module):
    """modeling_dbrx.py: the softmax of the logits in float32, its top-k over
    their p-norm (p = moe_normalize_expert_weights; none when None), both
    cast to the hidden dtype. Returns (probabilities, top-k weights,
    indices)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.moe_num_experts = config.num_experts
        self.moe_top_k = config.num_experts_per_tok
        self.moe_jitter_eps = None
        self.moe_normalize_expert_weights = config.moe_normalize_expert_weights
        self.layer = nn.Linear(self.hidden_size, self.moe_num_experts, bias=False)

    def forward(self, hidden_states):
        hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
        weights = self.layer(hidden_states).softmax(dim=-1, dtype=torch.float32)
        top_weights, top_experts = torch.topk(weights, self.moe_top_k, dim=-1)
        scale = torch.norm(top_weights, p=self.moe_normalize_expert_weights, dim=-1,
                           keepdim=True) if self.moe_normalize_expert_weights is not None else 1.0
        top_weights = top_weights / scale
        return weights.to(hidden_states.dtype), top_weights.to(hidden_states.dtype), top_experts


class DbrxExpertGLU(nn.Module):
    """Every expert's w1, v1 and w2 stacked, each (experts x inner, hidden);
    an expert computes act(x w1^T) * (x v1^T), times w2 (not transposed)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.ffn_hidden_size = config.moe_intermediate_size
        self.moe_num_experts = config.num_experts
        for name in ("w1", "v1", "w2"):
            p = nn.Parameter(torch.empty(self.moe_num_experts * self.ffn_hidden_size,
                                         self.hidden_size))
            nn.init.uniform_(p, -self.hidden_size ** -0.5, self.hidden_size ** -0.5)
            setattr(self, name, p)
        self.activation_fn = nn.SiLU()

    def forward(self, x, expert_w1, expert_v1, expert_w2):
        gate_proj = self.activation_fn(x.matmul(expert_w1.t()))
        return (gate_proj * x.matmul(expert_v1.t())).matmul(expert_w2)


class DbrxExperts(nn.Module):
    """Every expert in id order over its (top-k position, token) pairs; its
    output times the weight, index_add_-ed. Takes the block's (batch,
    tokens, hidden) input and returns that shape."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.moe_num_experts = config.num_experts
        self.mlp = DbrxExpertGLU(config)

    def forward(self, x, weights, top_weights, top_experts):
        bsz, q_len, hidden_size = x.shape
        x = x.view(-1, hidden_size)
        out = torch.zeros_like(x)
        expert_mask = F.one_hot(top_experts, num_classes=self.moe_num_experts).permute(2, 1, 0)
        shape = (self.moe_num_experts, self.mlp.ffn_hidden_size, self.mlp.hidden_size)
        w1, v1, w2 = (getattr(self.mlp, n).view(shape) for n in ("w1", "v1", "w2"))
        for expert_idx in range(self.moe_num_experts):
            topk_idx, token_idx = torch.where(expert_mask[expert_idx])
            if token_idx.shape[0] == 0:
                continue
            expert_tokens = x[None, token_idx].reshape(-1, hidden_size)
            expert_out = self.mlp(expert_tokens, w1[expert_idx], v1[expert_idx], w2[expert_idx]) \
                * top_weights[token_idx, topk_idx, None]
            out.index_add_(0, token_idx, expert_out)
        return out.reshape(bsz, q_len, hidden_size)


class DbrxFFN(nn.Module):
    """Returns (hidden states, the router's probabilities), which the model
    passes up as its router logits."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.router = DbrxRouter(config)
        self.experts = DbrxExperts(config)

    def forward(self, x):
        weights, top_weights, top_experts = self.router(x)
        return self.experts(x, weights, top_weights, top_experts), weights


class Qwen3VLMoeTextExperts(nn.Module):
    """gate_up_proj (experts, hidden, 2 x inner; gate then up), down_proj
    (experts, inner, hidden). At inference every expert runs on every token
    by bmm, up * act(gate); the outputs times the routing weights scattered
    over all experts (zero where not chosen), summed over the experts. Only
    that branch is reproduced (training loops over the chosen experts)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.num_experts = config.num_experts
        self.hidden_size = config.hidden_size
        inner = config.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(self.num_experts, self.hidden_size, 2 * inner))
        self.down_proj = nn.Parameter(torch.empty(self.num_experts, inner, self.hidden_size))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.uniform_(p, -p.shape[1] ** -0.5, p.shape[1] ** -0.5)
        self.act_fn = nn.SiLU()

    def forward(self, hidden_states, routing_weights, router_indices):
        if self.training:
            raise NotImplementedError("4.57.6's training branch is not reproduced")
        batch_size = hidden_states.shape[0]
        hidden_states = hidden_states.reshape(-1, self.hidden_size)
        hidden_states = hidden_states.repeat(self.num_experts, 1)
        hidden_states = hidden_states.view(self.num_experts, -1, self.hidden_size)
        gate_up = torch.bmm(hidden_states, self.gate_up_proj)
        gate, up = gate_up.chunk(2, dim=-1)
        next_states = torch.bmm((up * self.act_fn(gate)), self.down_proj)
        next_states = next_states.reshape(self.num_experts, batch_size, -1, self.hidden_size)
        next_states = next_states * routing_weights.transpose(0, 1).view(
            self.num_experts, batch_size, -1)[..., None]
        return next_states.sum(dim=0)


class Qwen3VLMoeTextSparseMoeBlock(nn.Module):
    """Qwen3-VL-MoE's text block (4.57.6): an nn.Linear gate; softmax in
    float32, top-k, always renormalised, cast to the hidden dtype and
    scattered over all experts; the experts above. Returns (hidden states,
    router logits)."""

    def __init__(self, config: MoeConfig):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.num_experts = config.num_experts
        self.top_k = config.num_experts_per_tok
        self.gate = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = Qwen3VLMoeTextExperts(config)

    def forward(self, hidden_states):
        batch_size = hidden_states.shape[0]
        hidden_states = hidden_states.reshape(-1, self.hidden_size)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=-1, dtype=torch.float)
        routing_weights, router_indices = torch.topk(routing_weights, self.top_k, dim=-1)
        routing_weights = routing_weights / routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        router_weights = torch.zeros_like(router_logits).scatter_(1, router_indices,
                                                                  routing_weights)
        hidden_states = hidden_states.reshape(batch_size, -1, self.hidden_size)
        routed_out = self.experts(hidden_states, router_weights, router_indices)
        return routed_out, router_logits


# The modules whose models record router logits when asked through
# `_can_record_outputs` (4.57.6): the output at this index, by patching
# the instance's forward for the call. Qwen2-MoE and OLMoE pass the block's
# returned logits up through the decoder layer instead; DeepSeek-V3 has none.
ROUTER_LOGITS_RECORDED_FROM = {
    MixtralSparseMoeBlock: 1, Qwen3MoeSparseMoeBlock: 1, Qwen3NextSparseMoeBlock: 1,
    GptOssTopKRouter: 0, Llama4TextMoe: 1, Ernie4_5_MoeSparseMoeBlock: 1,
    Qwen3VLMoeTextSparseMoeBlock: 1,
}
