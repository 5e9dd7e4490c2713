"""Small MoE language models in the module layouts of Hugging Face
Transformers, for the demo and the tests (Transformers is not a Debian
package). Each block computes what the Transformers block of its layout
computes; the attention is a plain causal one, enough for generation.

Layouts: "mixtral" (4.x: gate nn.Linear, experts[i].w1/w3/w2), "qwen"
(4.x Qwen3-MoE / OLMoE: experts[i].gate_proj/up_proj/down_proj,
norm_topk_prob), "qwen2" (that with Qwen2-MoE's sigmoid-gated shared
expert) and "mixtral_fused" (5.x: a MixtralTopKRouter gate and fused
gate_up_proj / down_proj expert tensors).
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


class GluExpert(nn.Module):
    def __init__(self, hidden, inner, names):
        super().__init__()
        self._names = names  # (gate, up, down)
        setattr(self, names[0], nn.Linear(hidden, inner, bias=False))
        setattr(self, names[1], nn.Linear(hidden, inner, bias=False))
        setattr(self, names[2], nn.Linear(inner, hidden, bias=False))
        self.act_fn = nn.SiLU()

    def forward(self, x):
        gate, up, down = (getattr(self, n) for n in self._names)
        return down(self.act_fn(gate(x)) * up(x))


class PerExpertMoeBlock(nn.Module):
    """The 4.x sparse-MoE block: softmax, top-k, optional renormalisation,
    experts in id order; returns (hidden states, router logits)."""

    def __init__(self, hidden, inner, experts, top_k, names, norm_topk_prob, shared_inner=0):
        super().__init__()
        self.top_k = top_k
        self.num_experts = experts
        self.norm_topk_prob = norm_topk_prob
        self.gate = nn.Linear(hidden, experts, bias=False)
        self.experts = nn.ModuleList([GluExpert(hidden, inner, names) for _ in range(experts)])
        if shared_inner:
            self.shared_expert = GluExpert(hidden, shared_inner, ("gate_proj", "up_proj",
                                                                  "down_proj"))
            self.shared_expert_gate = nn.Linear(hidden, 1, bias=False)

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.view(-1, hidden)
        router_logits = self.gate(x)
        weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        weights, chosen = torch.topk(weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights /= weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        mask = F.one_hot(chosen, num_classes=self.num_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            position, token = torch.where(mask[e].squeeze(0))
            y = self.experts[e](x[token]) * weights[token, position, None]
            out.index_add_(0, token, y.to(x.dtype))
        if hasattr(self, "shared_expert"):
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.reshape(batch, seq, hidden), router_logits


class MixtralTopKRouter(nn.Module):
    """5.x Mixtral's router: logits, renormalised top-k of their softmax."""

    def __init__(self, hidden, experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.num_experts = experts
        self.weight = nn.Parameter(torch.empty(experts, hidden))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        logits = F.linear(x, self.weight)
        top, chosen = torch.topk(F.softmax(logits.float(), dim=-1), self.top_k, dim=-1)
        top /= top.sum(dim=-1, keepdim=True)
        return logits, top, chosen


class FusedExperts(nn.Module):
    def __init__(self, hidden, inner, experts):
        super().__init__()
        self.num_experts = experts
        self.gate_up_proj = nn.Parameter(torch.empty(experts, 2 * inner, hidden))
        self.down_proj = nn.Parameter(torch.empty(experts, hidden, inner))
        for p in (self.gate_up_proj, self.down_proj):
            nn.init.uniform_(p, -1 / math.sqrt(p.shape[-1]), 1 / math.sqrt(p.shape[-1]))
        self.act_fn = nn.SiLU()

    def forward(self, x, chosen, weights):
        out = torch.zeros_like(x)
        mask = F.one_hot(chosen, num_classes=self.num_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            e = e[0]
            position, token = torch.where(mask[e])
            gate, up = F.linear(x[token], self.gate_up_proj[e]).chunk(2, dim=-1)
            y = F.linear(self.act_fn(gate) * up, self.down_proj[e]) * weights[token, position, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out


class FusedMoeBlock(nn.Module):
    """The 5.x Mixtral block: returns the hidden states only."""

    def __init__(self, hidden, inner, experts, top_k):
        super().__init__()
        self.top_k = top_k
        self.gate = MixtralTopKRouter(hidden, experts, top_k)
        self.experts = FusedExperts(hidden, inner, experts)

    def forward(self, hidden_states):
        batch, seq, hidden = hidden_states.shape
        x = hidden_states.view(-1, hidden)
        _, weights, chosen = self.gate(x)
        return self.experts(x, chosen, weights).reshape(batch, seq, hidden)


def make_block(layout, hidden, inner, experts, top_k):
    if layout == "mixtral":
        return PerExpertMoeBlock(hidden, inner, experts, top_k, ("w1", "w3", "w2"), True)
    if layout == "qwen":
        return PerExpertMoeBlock(hidden, inner, experts, top_k,
                                 ("gate_proj", "up_proj", "down_proj"), True)
    if layout == "qwen2":
        return PerExpertMoeBlock(hidden, inner, experts, top_k,
                                 ("gate_proj", "up_proj", "down_proj"), False, shared_inner=inner)
    if layout == "mixtral_fused":
        return FusedMoeBlock(hidden, inner, experts, top_k)
    raise ValueError(f"unknown layout {layout!r}")


class RMSNorm(nn.Module):
    def __init__(self, hidden, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, layout, hidden, heads, inner, experts, top_k):
        super().__init__()
        self.heads = heads
        self.input_norm = RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.post_norm = RMSNorm(hidden)
        # Mixtral's attribute name; the Qwen models call it mlp.
        self.block_sparse_moe = make_block(layout, hidden, inner, experts, top_k)

    def forward(self, x, past=None):
        """x: (batch, new tokens, hidden); past: the keys and values of the
        tokens before them. Returns the output and the keys and values now."""
        batch, seq, hidden = x.shape
        q, k, v = self.qkv(self.input_norm(x)).chunk(3, dim=-1)
        shape = (batch, seq, self.heads, hidden // self.heads)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hidden // self.heads)
        total = k.shape[2]
        causal = torch.ones(seq, total, dtype=torch.bool, device=x.device).triu(total - seq + 1)
        attention = F.softmax(scores.masked_fill(causal, float("-inf")), dim=-1) @ v
        x = x + self.out(attention.transpose(1, 2).reshape(batch, seq, hidden))
        moe = self.block_sparse_moe(self.post_norm(x))
        return x + (moe[0] if isinstance(moe, tuple) else moe), (k, v)


class TinyMoeLM(nn.Module):
    """A byte-level causal LM with an MoE block per layer."""

    def __init__(self, layout="mixtral", layers=8, experts=8, top_k=2, hidden=64, heads=4,
                 inner=128, vocab=256):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(
            [DecoderLayer(layout, hidden, heads, inner, experts, top_k) for _ in range(layers)])
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens, past=None):
        """Next-token logits for `tokens` after the cached `past` (a list of
        each layer's keys and values, or None), and the cache now."""
        x = self.embed(tokens)
        now = []
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, None if past is None else past[i])
            now.append(kv)
        return self.lm_head(self.norm(x)), now

    @torch.no_grad()
    def generate(self, prompt, new_tokens):
        """Greedy decoding with a key-value cache: the prompt in one pass, then
        one token per step, as an engine decodes. Returns the tokens and each
        step's next-token logits."""
        logits, past = self(prompt)
        tokens, steps = prompt, []
        for _ in range(new_tokens):
            steps.append(logits[:, -1, :])
            next_token = steps[-1].argmax(dim=-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
            logits, past = self(next_token, past)
        return tokens, steps
