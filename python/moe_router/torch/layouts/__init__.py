"""Small reproductions of Hugging Face Transformers' sparse-MoE modules, for
the demo and the tests: Transformers is not a Debian package, and these are
what `moe_router.torch` must recognise and compute exactly.

Each class has the name, attributes, outputs and arithmetic of the class of
that name in Transformers, read from its source at the versions named in
`transformers_4` (v4.57.6) and `transformers_5` (v5.2.0); only what a
block computes at inference is reproduced (no jitter, no initialisation
schemes, no parallelism plans).
"""

from dataclasses import dataclass


@dataclass
class MoeConfig:
    """The configuration fields the reproduced modules read, under the names
    Transformers' configs give them (several names for one number where the
    families differ)."""
    hidden_size: int = 64
    intermediate_size: int = 128  # dense MLPs (DeepSeek's first layers)
    moe_intermediate_size: int = 128
    num_experts: int = 8  # Qwen, OLMoE
    num_experts_per_tok: int = 2
    norm_topk_prob: bool = True
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE, Qwen3-Next
    n_group: int = 1  # DeepSeek-V3
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    n_shared_experts: int = 1
    hidden_act: str = "silu"
    router_jitter_noise: float = 0.0
    input_jitter_noise: float = 0.0
    topk_method: str = "greedy"  # DeepSeek-V2: greedy | group_limited_greedy
    moe_norm_min: float = 1e-12  # ERNIE 4.5
    moe_num_shared_experts: int = 1
    moe_normalize_expert_weights: object = 1.0  # DBRX: p of the p-norm, or None
    use_expert_bias: bool = True  # LFM2-MoE
    # Transformers 5: which experts implementation the fused experts run.
    _experts_implementation: str = "eager"

    @property
    def num_local_experts(self) -> int:  # Mixtral, Phi-3.5-MoE, DeepSeek-V3 5.x
        return self.num_experts

    @property
    def n_routed_experts(self) -> int:  # DeepSeek-V3
        return self.num_experts

    @property
    def moe_num_experts(self) -> int:  # ERNIE 4.5
        return self.num_experts

    @property
    def moe_k(self) -> int:  # ERNIE 4.5
        return self.num_experts_per_tok

    @property
    def moe_topk(self) -> int:  # Hunyuan-MoE
        return self.num_experts_per_tok
