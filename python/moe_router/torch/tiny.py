"""Small MoE language models whose MoE blocks are Transformers' own layouts
(moe_router.torch.layouts), for the demo and the tests: Transformers is not
a Debian package. The attention is a plain causal one with a key-value
cache, enough for generation.

`layout` names a family, `version` the Transformers major version whose
modules it uses: mixtral, qwen2_moe (a shared expert), qwen3_moe, olmoe,
qwen3_next (a shared expert), deepseek_v3 (sigmoid scores, a bias,
groups, shared experts, a dense first layer), glm4_moe and dots1 (the
DeepSeek-V3 block under their names; GLM-4.5 with one group) and gpt_oss
(a biased router, top-k then softmax; biased, transposed experts with a
clamped SwiGLU) and llama4 (top-1, sigmoid weights scaling the experts'
inputs, a shared expert), ernie4_5_moe (softmax plus a bias, shared
experts), minimax_m2 (sigmoid plus the block's bias) and qwen3_5_moe (a
shared expert, top-k always renormalised) and deepseek_v2 (softmax,
greedy or group-limited, scaled, shared experts, a dense first layer),
each in 4 or 5 where that version has it (CASES: MiniMax-M2 and Qwen3.5
arrived in 5), hunyuan_v1_moe (softmax top-k from a float32 gate, a
shared MLP), jamba (softmax top-k, not renormalised; the MoE blocks of
its attention layers) and granitemoe (top-k of the logits then softmax;
ParallelExperts on the samples sorted by expert) and dbrx (4.x: softmax
top-k over the p-norm; every expert's w1, v1, w2 stacked) and afmoe (5.x:
sigmoid plus the block's bias, one group; per-expert modules on the
samples sorted by expert) and lfm2_moe (5.x: the sigmoid in the model's
dtype plus the block's float32 bias; a dense first layer) and qwen3_vl_moe
(4.x: softmax top-k, every expert run by bmm and weighted densely). The model
records router logits when asked the way that version's model does: 4.x
patches the recorded blocks' forward for the call, 5.x hooks the routers.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F

from moe_router.torch.layouts import MoeConfig
from moe_router.torch.layouts import transformers_4 as v4
from moe_router.torch.layouts import transformers_5 as v5

_BLOCKS = {
    "mixtral": "MixtralSparseMoeBlock", "qwen2_moe": "Qwen2MoeSparseMoeBlock",
    "qwen3_moe": "Qwen3MoeSparseMoeBlock", "olmoe": "OlmoeSparseMoeBlock",
    "qwen3_next": "Qwen3NextSparseMoeBlock", "deepseek_v3": "DeepseekV3MoE",
    "glm4_moe": "Glm4MoeMoE", "dots1": "Dots1MoE", "gpt_oss": "GptOssMLP",
    "llama4": "Llama4TextMoe", "ernie4_5_moe": "Ernie4_5_MoeSparseMoeBlock",
    "minimax_m2": "MiniMaxM2SparseMoeBlock", "qwen3_5_moe": "Qwen3_5MoeSparseMoeBlock",
    "deepseek_v2": {4: "DeepseekV2MoE", 5: "DeepseekV2Moe"},  # 5.x renamed it
    "hunyuan_v1_moe": "HunYuanMoEV1Moe", "jamba": "JambaSparseMoeBlock",
    "granitemoe": "GraniteMoeMoE", "dbrx": {4: "DbrxFFN"},  # 5.2.0's is refused
    "afmoe": {5: "AfmoeMoE"}, "lfm2_moe": {5: "Lfm2MoeSparseMoeBlock"},
    "qwen3_vl_moe": {4: "Qwen3VLMoeTextSparseMoeBlock"},  # 5.x's: Qwen3.5's router
}
# Layouts that route by DeepSeek-V3's rule and begin with dense layers.
GROUPED_LAYOUTS = ("deepseek_v3", "glm4_moe", "dots1", "deepseek_v2")
# Layouts whose models begin with a dense layer.
DENSE_FIRST_LAYOUTS = GROUPED_LAYOUTS + ("lfm2_moe",)
# Layouts whose models record no router logits (none in _can_record_outputs).
NO_ROUTER_LOGITS = GROUPED_LAYOUTS + ("hunyuan_v1_moe",)
# 5.x models of these families record none; 4.x's pass the blocks' up.
NO_ROUTER_LOGITS_5 = NO_ROUTER_LOGITS + ("granitemoe", "afmoe", "lfm2_moe")
LAYOUTS = tuple(_BLOCKS)


def _block_name(layout, version):
    name = _BLOCKS[layout]
    return name.get(version, "") if isinstance(name, dict) else name


_MODULES = {4: v4, 5: v5}
# (layout, version) pairs that exist: MiniMax-M2 arrived in Transformers 5.
CASES = [(layout, version) for version in _MODULES for layout in LAYOUTS
         if hasattr(_MODULES[version], _block_name(layout, version))]


def make_config(layout, experts=8, top_k=None, hidden=64, inner=128, **overrides) -> MoeConfig:
    """A configuration as the family's models have it, small (top_k by
    default 1 for Llama 4, as its models route, else 2)."""
    if top_k is None:
        top_k = 1 if layout == "llama4" else 2
    config = MoeConfig(hidden_size=hidden, intermediate_size=inner, moe_intermediate_size=inner,
                       num_experts=experts, num_experts_per_tok=top_k)
    if layout in ("qwen2_moe", "qwen3_next", "qwen3_5_moe"):
        config.shared_expert_intermediate_size = inner
    if layout == "qwen2_moe":
        config.norm_topk_prob = False  # Qwen1.5-MoE's setting
    if layout in ("deepseek_v3", "dots1", "deepseek_v2"):
        config.n_group = 4 if experts % 4 == 0 and experts // 4 >= 2 else 1
        config.topk_group = max(1, config.n_group // 2)
        config.routed_scaling_factor = 2.5
    if layout in ("glm4_moe", "afmoe", "lfm2_moe"):  # scaling 2.5 (AFMoE's route_scale)
        config.routed_scaling_factor = 2.5
    if layout == "deepseek_v2":  # V2-Lite's greedy top-k; V2's groups on request
        config.routed_scaling_factor = 1.0
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def make_block(layout, version, config: MoeConfig) -> nn.Module:
    if layout not in _BLOCKS or version not in _MODULES:
        raise ValueError(f"unknown layout {layout!r} for Transformers {version} (layouts: "
                         f"{', '.join(LAYOUTS)}; versions 4, 5)")
    return getattr(_MODULES[version], _block_name(layout, version))(config)


class RMSNorm(nn.Module):
    def __init__(self, hidden, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class DecoderLayer(nn.Module):
    def __init__(self, mlp: nn.Module, hidden, heads, mlp_name="mlp"):
        super().__init__()
        # 4.x Mixtral's is block_sparse_moe, Llama 4's and Jamba's feed_forward.
        self._mlp_name = mlp_name
        self.heads = heads
        self.input_norm = RMSNorm(hidden)
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden, bias=False)
        self.post_norm = RMSNorm(hidden)
        setattr(self, mlp_name, mlp)

    def forward(self, x, past=None):
        """x: (batch, new tokens, hidden); past: the keys and values of the
        tokens before them. Returns the output, the keys and values now, and
        the MLP's router logits when it returns them (4.x blocks)."""
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
        x = x + self.out(attention.transpose(1, 2).reshape(batch, seq, hidden).to(x.dtype))
        mlp = getattr(self, self._mlp_name)(self.post_norm(x))
        out, logits = mlp if isinstance(mlp, tuple) else (mlp, None)
        return x + out, (k, v), logits


class TinyMoeLM(nn.Module):
    """A byte-level causal LM with a Transformers MoE block per layer (after
    `dense_layers` dense MLPs, as DeepSeek-V3's first_k_dense_replace)."""

    def __init__(self, layout="mixtral", layers=8, experts=8, top_k=None, hidden=64, heads=4,
                 inner=128, vocab=256, version=4, dense_layers=None, **config_overrides):
        super().__init__()
        self.version = version
        self.arguments = dict(layout=layout, layers=layers, experts=experts, top_k=top_k,
                              hidden=hidden, heads=heads, inner=inner, vocab=vocab,
                              dense_layers=dense_layers, **config_overrides)
        self.config = make_config(layout, experts, top_k, hidden, inner, **config_overrides)
        if dense_layers is None:
            dense_layers = 1 if layout in DENSE_FIRST_LAYOUTS else 0
        self.embed = nn.Embedding(vocab, hidden)
        mlps = [v4.DeepseekV3MLP(self.config) if i < dense_layers
                else make_block(layout, version, self.config) for i in range(layers)]
        mlp_name = "block_sparse_moe" if (layout, version) == ("mixtral", 4) or \
            layout == "granitemoe" else \
            "feed_forward" if layout in ("llama4", "jamba") else \
            "ffn" if layout == "dbrx" else "mlp"
        self.layers = nn.ModuleList([DecoderLayer(mlp, hidden, heads, mlp_name) for mlp in mlps])
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)

    def forward(self, tokens, past=None, output_router_logits=False, output_hidden_states=False):
        """Next-token logits for `tokens` after the cached `past` (a list of
        each layer's keys and values, or None), and the cache now; with
        output_router_logits / output_hidden_states, a dict of those too."""
        recorded = []
        undo = self._record_router_logits(recorded) if output_router_logits else []
        try:
            x = self.embed(tokens)
            now, hidden_states, passed_up = [], [x], []
            for i, layer in enumerate(self.layers):
                x, kv, logits = layer(x, None if past is None else past[i])
                now.append(kv)
                hidden_states.append(x)
                if logits is not None:
                    passed_up.append(logits)
        finally:
            for action in undo:
                action()
        logits = self.lm_head(self.norm(x))
        if not (output_router_logits or output_hidden_states):
            return logits, now
        extra = {}
        if output_router_logits:
            # 4.x models that record none pass the blocks' returned logits up.
            extra["router_logits"] = tuple(recorded or passed_up)
        if output_hidden_states:
            extra["hidden_states"] = tuple(hidden_states)
        return logits, now, extra

    def _record_router_logits(self, into):
        """Installs the version's recorder; returns what undoes it."""
        table = _MODULES[self.version].ROUTER_LOGITS_RECORDED_FROM

        def recorded(name, module):
            for key, index in table.items():
                if not isinstance(key, tuple):
                    if isinstance(module, key):
                        return index
                # Jamba's recorder, a Jamba model's: its plain nn.Linear
                # routers, not Llama 4's Llama4Router (an nn.Linear too).
                elif type(module) is key[0] and name.endswith("." + key[1]):
                    return index
            return None

        undo = []
        for name, module in self.named_modules():
            index = recorded(name, module)
            if index is None:
                continue
            if self.version == 5:
                handle = module.register_forward_hook(
                    lambda m, args, out, i=index: into.append(out if i == "output" else out[i]))
                undo.append(handle.remove)
            else:  # 4.x: the instance's forward, wrapped for the call
                original = module.forward

                def wrapped(*args, _original=original, _index=index, **kwargs):
                    out = _original(*args, **kwargs)
                    into.append(out[_index])
                    return out
                module.forward = wrapped
                undo.append(lambda m=module, f=original: setattr(m, "forward", f))
        return undo

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


def fused(model: TinyMoeLM) -> TinyMoeLM:
    """A Transformers 4.x-layout model's weights in its 5.x layout, as 5.x
    fuses a checkpoint's per-expert tensors when it loads them: each
    expert's gate and up rows stacked into gate_up_proj, its down matrix
    into down_proj; everything else (routers, biases, shared experts,
    attention) by name (4.x Mixtral's block_sparse_moe is 5.x's mlp).
    Training the per-expert layout is cheaper: a fused parameter indexed
    per expert costs a full-size gradient per expert."""
    from moe_router.torch.blocks import find_moe_blocks  # (blocks imports nothing from here)

    if model.version != 4:
        raise ValueError("fused() takes a Transformers 4.x-layout model")
    target = TinyMoeLM(version=5, **model.arguments).to(model.lm_head.weight.dtype).eval()
    state = {k.replace("block_sparse_moe.", "mlp."): v for k, v in model.state_dict().items()}
    done = set()
    with torch.no_grad():
        for old, new in zip(find_moe_blocks(model), find_moe_blocks(target)):
            experts = new.fused_experts
            for e in range(old.num_experts):
                gate, up, down = old.expert_tensors(e)
                experts.gate_up_proj[e] = torch.cat([gate, up], dim=0)
                experts.down_proj[e] = down
            done.add(f"{new.name}.experts.")
        for key, value in target.state_dict().items():
            if not any(key.startswith(prefix) for prefix in done):
                value.copy_(state[key])
    return target


def load_balancing_loss(router_logits, num_experts, top_k):
    """The auxiliary loss Mixtral's (and the Qwen-MoE family's) causal-LM
    head computes from the recorded router logits, without an attention
    mask (load_balancing_loss_func in modeling_mixtral.py)."""
    if not router_logits:
        return 0
    concatenated = torch.cat(list(router_logits), dim=0)
    routing_weights = F.softmax(concatenated, dim=-1)
    _, selected = torch.topk(routing_weights, top_k, dim=-1)
    expert_mask = F.one_hot(selected, num_experts)
    tokens_per_expert = torch.mean(expert_mask.float(), dim=0)
    router_prob_per_expert = torch.mean(routing_weights, dim=0)
    return torch.sum(tokens_per_expert * router_prob_per_expert.unsqueeze(0)) * num_experts
