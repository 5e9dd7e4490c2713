"""moe_router.torch on every Transformers layout it supports, 4.x and 5.x:
models whose MoE blocks are the reproduced Transformers modules
(moe_router.torch.layouts), offloaded at bonus 0 without prefetch, must
compute bit for bit what the original computes (float32 and bfloat16, every
experts implementation PyTorch 1.13 can run, tied gate logits included),
report the same router logits, auxiliary loss and hidden states, generate
the same tokens with a key-value cache, keep the users' hooks firing and
stay within the pool's budget. Blocks whose rule the engine lacks are
refused by name.
"""

import copy
import re

import pytest
import torch
from torch import nn

from moe_router.torch import UnsupportedModel, offload_experts
from moe_router.torch.blocks import find_moe_blocks, router_of
from moe_router.torch.layouts import transformers_4 as v4
from moe_router.torch.layouts import transformers_5 as v5
from moe_router.torch.tiny import (CASES, DENSE_FIRST_LAYOUTS, NO_ROUTER_LOGITS,
                                   NO_ROUTER_LOGITS_5, TinyMoeLM, fused, load_balancing_loss)



def case_id(case):
    return f"{case[0]}-v{case[1]}"


def moe_blocks(model):
    return [m for layer in model.layers for m in layer.children()
            if hasattr(m, "experts") or hasattr(m, "input_linear")]


def routers(model):
    return [router_of(b) for b in moe_blocks(model)]


def gate_weight(router):
    """The gate's matrix (Hunyuan-MoE's gate holds it in `wg`, Granite-MoE's
    in `layer`, AFMoE's router in `gate`)."""
    for inner in ("wg", "layer", "gate"):
        if hasattr(router, inner):
            return getattr(router, inner).weight
    return router.weight


def choice_biases(block):
    """What a block adds to its logits or scores before choosing: DeepSeek's
    router's, GPT-OSS's router's, ERNIE 4.5's moe_statics', MiniMax-M2's
    block's."""
    router = router_of(block)
    owners = [block, router, getattr(block, "moe_statics", None),
              getattr(router, "moe_statics", None)]
    return [getattr(o, n) for o in owners for n in ("e_score_correction_bias", "bias",
                                                    "expert_bias")
            if isinstance(getattr(o, n, None), torch.Tensor)]


def tie_two_experts(model):
    """Experts 2 and 5 of every block get the same gate row (and bias): their
    logits are equal for every token, so whenever one of them is at the
    top-k boundary the choice is a tie the model's top-k breaks."""
    with torch.no_grad():
        for block in moe_blocks(model):
            router = router_of(block)
            weight = gate_weight(router)
            weight[5] = weight[2]
            for bias in choice_biases(block):
                bias[..., 5] = bias[..., 2]


def make(layout, version, dtype=torch.float32, implementation="eager", seed=0, layers=3,
         experts=8, top_k=None, **config):
    torch.manual_seed(seed)
    model = TinyMoeLM(layout, layers=layers, experts=experts, top_k=top_k, version=version,
                      **config).eval()
    model.config._experts_implementation = implementation
    with torch.no_grad():
        for block in moe_blocks(model):  # trained choice biases are not zero
            for bias in choice_biases(block):
                bias.copy_(torch.randn(bias.shape) * 0.05)
    tie_two_experts(model)
    model = model.to(dtype)
    for block in moe_blocks(model):  # kept in float32, as Transformers keeps them
        router = router_of(block)
        if getattr(router, "e_score_correction_bias", None) is not None:
            router.e_score_correction_bias = router.e_score_correction_bias.float()
        if layout == "lfm2_moe" and getattr(block, "expert_bias", None) is not None:
            block.expert_bias = block.expert_bias.float()
        if layout == "ernie4_5_moe":
            for module in (router, getattr(block, "moe_statics", None),
                           getattr(router, "moe_statics", None)):
                if module is not None:
                    module.float()
    return model


def tied_at_the_boundary(model, x):
    """How many (block, token) pairs of a forward pass on `x` had experts 2
    and 5 split by the top-k boundary with equal scores: ties that decide."""
    count = 0

    def hook(module, args, output):
        nonlocal count
        router = router_of(module)
        inputs = args[0].reshape(-1, args[0].shape[-1])
        logits = torch.nn.functional.linear(inputs.float(), gate_weight(router).float())
        k = next(getattr(o, n) for o in (router, module) for n in ("top_k", "moe_top_k")
                 if hasattr(o, n))
        for bias in choice_biases(module):
            logits = logits + bias.float().reshape(-1)
        chosen = torch.topk(logits, k).indices
        has2, has5 = (chosen == 2).any(dim=1), (chosen == 5).any(dim=1)
        count += int((has2 ^ has5).sum())

    handles = [b.register_forward_hook(hook) for b in moe_blocks(model)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return count


def run(model, prompt, steps=8):
    """What the tests compare: greedy tokens with a KV cache, and one
    forward pass's logits, router logits, hidden states and aux loss."""
    with torch.no_grad():
        tokens, _ = model.generate(prompt, steps)
        logits, _, extra = model(prompt, output_router_logits=True, output_hidden_states=True)
    loss = load_balancing_loss(extra["router_logits"], model.config.num_experts,
                               model.config.num_experts_per_tok)
    return tokens, logits, extra["router_logits"], extra["hidden_states"], loss


def assert_same(want, got):
    tokens, logits, router_logits, hidden, loss = want
    tokens2, logits2, router_logits2, hidden2, loss2 = got
    assert torch.equal(tokens, tokens2)
    assert torch.equal(logits, logits2)
    assert len(router_logits) == len(router_logits2)
    assert all(torch.equal(a, b) for a, b in zip(router_logits, router_logits2))
    assert all(torch.equal(a, b) for a, b in zip(hidden, hidden2))
    assert torch.equal(torch.as_tensor(loss), torch.as_tensor(loss2))


def expert_bytes(model):
    tensors = find_moe_blocks(model)[0].expert_tensors(0)
    return sum(t.numel() * t.element_size() for t in tensors)


def offloaded(model, slots=6, **kwargs):
    return offload_experts(model, budget_bytes=slots * expert_bytes(model), bonus=0,
                           prefetch=None, **kwargs)


# Where seed 0's weights never put the tied experts at the top-k boundary
# on the prompt below, a seed whose weights do.
TIE_SEEDS = {("lfm2_moe", 5): 1}


def assert_bit_equal_offloaded(layout, version, dtype, top_k=None, experts=8, ties=True,
                               **config):
    implementations = ["eager", "batched_mm"] if version == 5 else ["eager"]
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    for implementation in implementations:
        model = make(layout, version, dtype, implementation, top_k=top_k, experts=experts,
                     seed=TIE_SEEDS.get((layout, version), 0), **config)
        reference = copy.deepcopy(model)
        assert not ties or tied_at_the_boundary(model, prompt) > 0  # the ties are exercised
        want = run(reference, prompt)
        if layout not in (NO_ROUTER_LOGITS_5 if version == 5 else NO_ROUTER_LOGITS):
            assert len(want[2]) == 3
        handle = offloaded(model)
        try:
            got = run(model, prompt)
            stats = handle.stats()
            assert len(handle.holds()) <= handle.pool.slots == 6
            assert handle.holds() == handle.engine_view()
        finally:
            handle.close()
        assert_same(want, got)
        assert stats["misses"] > 0 and stats["evictions"] > 0  # it did page
        assert_same(want, run(model, prompt))  # close() put everything back


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bonus_zero_is_bit_equal_to_the_model_with_ties(case, dtype):
    assert_bit_equal_offloaded(*case, dtype)


@pytest.mark.parametrize("version", [4, 5])
def test_llama4_with_three_experts_per_token_sums_over_every_expert_as_the_model(version):
    # Llama 4's models route top-1 (the default above); its code allows more.
    # Over 64 experts PyTorch's sum over them is not sequential, so leaving
    # out the zero outputs would change the rounding.
    # (Ties are left to the test above: at 64 experts they are rare.)
    assert_bit_equal_offloaded("llama4", version, torch.float32, top_k=3, experts=64,
                               ties=False)


def test_qwen3_vl_moe_4x_with_three_experts_per_token_sums_over_every_expert_as_the_model():
    # Its experts run densely, as Llama 4's: with more than two a token over
    # more than 64 experts the order of the sum over all of them matters.
    assert_bit_equal_offloaded("qwen3_vl_moe", 4, torch.float32, top_k=3, experts=96,
                               ties=False)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_users_hooks_on_blocks_and_routers_keep_firing(case):
    def fired_in(model, offload):
        fired = []
        block, router = moe_blocks(model)[-1], routers(model)[-1]
        block.register_forward_hook(lambda m, a, o: fired.append("block"))
        router.register_forward_hook(lambda m, a, o: fired.append("router"))
        handle = offloaded(model) if offload else None
        try:
            with torch.no_grad():
                model(torch.tensor([[1, 2, 3]]))
        finally:
            if handle:
                handle.close()
        return fired

    model = make(*case)
    want = fired_in(copy.deepcopy(model), offload=False)
    # Every block fires; routers fire where the model calls them (5.x
    # DeepSeek-V2 applies its gate's weight without calling the gate).
    assert want.count("block") == 1 and want.count("router") == (case != ("deepseek_v2", 5))
    assert fired_in(model, offload=True) == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_deepseek_v2_group_limited_greedy_in_4x_is_bit_equal(dtype):
    assert_bit_equal_offloaded("deepseek_v2", 4, dtype, topk_method="group_limited_greedy")
    model = make("deepseek_v2", 4, topk_method="group_limited_greedy")
    assert find_moe_blocks(model)[0].routing.rule == {
        "preset": "deepseek_v2", "num_groups": 4, "kept_groups": 2, "scaling": 1.0}


def test_deepseek_v2_group_limited_greedy_in_5x_is_refused_as_transformers_fails_it():
    model = make("deepseek_v2", 5, topk_method="group_limited_greedy")
    with pytest.raises(AttributeError, match="num_experts"):
        with torch.no_grad():
            model(torch.tensor([[1, 2]]))
    with pytest.raises(UnsupportedModel, match=re.escape(
            "Transformers 5.2.0's DeepseekV2Moe.route_tokens_to_experts cannot run "
            "group_limited_greedy")):
        offload_experts(model, 1 << 24)


def test_grouped_mm_fails_as_transformers_does_without_pytorchs_grouped_mm():
    # Debian's PyTorch 1.13 has no grouped_mm: Transformers raises
    # ImportError when the experts run, and so does the offloaded model.
    model = make("qwen3_moe", 5, implementation="grouped_mm")
    reference = copy.deepcopy(model)
    with pytest.raises(ImportError, match="grouped_mm"):
        with torch.no_grad():
            reference(torch.tensor([[1, 2]]))
    handle = offloaded(model)
    try:
        with pytest.raises(ImportError, match="grouped_mm"):
            with torch.no_grad():
                model(torch.tensor([[1, 2]]))
    finally:
        handle.close()


def test_the_deepseek_rule_reaches_the_engine_with_each_layers_bias():
    model = make("deepseek_v3", 5, layers=4, experts=16)
    handle = offloaded(model, slots=12)
    try:
        block = handle.blocks[0]
        assert block.layout == "block_routes" and len(handle.blocks) == 3  # layer 0 is dense
        assert block.routing.rule == {"preset": "deepseek_v3", "num_groups": 4,
                                      "kept_groups": 2, "normalization": "sum_plus_epsilon",
                                      "scaling": 2.5}
        biases = [b.routing.choice_bias for b in handle.blocks]
        assert all(torch.equal(torch.from_numpy(bias), r.e_score_correction_bias)
                   for bias, r in zip(biases, routers(model)))
    finally:
        handle.close()


@pytest.mark.parametrize("version,layout", [(4, "dense_weights_router"), (5, "router")])
def test_gpt_oss_routes_by_its_rule_with_its_routers_bias(version, layout):
    model = make("gpt_oss", version)
    handle = offloaded(model)
    try:
        block = handle.blocks[0]
        assert (block.layout, block.family) == (layout, "GptOssTopKRouter")
        assert block.routing.rule == {"preset": "gpt_oss"} and block.routing.choice_bias is None
        x = torch.randn(5, 64)
        router = routers(model)[0]
        assert torch.equal(block.gate_logits(x), x @ router.weight.T + router.bias)
        assert block.fused_format.transposed and block.fused_format.biased
    finally:
        handle.close()


# Per family and version: the layout found, the class that identified it,
# the engine's rule.
FOUND = {
    ("mixtral", 4): ("inline", "MixtralSparseMoeBlock", "mixtral"),
    ("qwen2_moe", 4): ("inline", "Qwen2MoeSparseMoeBlock", "qwen_no_norm"),
    ("qwen3_moe", 4): ("inline", "Qwen3MoeSparseMoeBlock", "mixtral"),
    ("olmoe", 4): ("inline", "OlmoeSparseMoeBlock", "mixtral"),
    ("qwen3_next", 4): ("inline", "Qwen3NextSparseMoeBlock", "mixtral"),
    ("deepseek_v3", 4): ("deepseek_router", "DeepseekV3TopkRouter", "deepseek_v3"),
    ("glm4_moe", 4): ("deepseek_router", "Glm4MoeTopkRouter", "deepseek_v3"),
    ("dots1", 4): ("deepseek_router", "Dots1TopkRouter", "deepseek_v3"),
    ("gpt_oss", 4): ("dense_weights_router", "GptOssTopKRouter", "gpt_oss"),
    ("llama4", 4): ("scaled_input", "Llama4Router", "llama4"),
    ("deepseek_v2", 4): ("deepseek_v2_router", "DeepseekV2MoEGate", "qwen_no_norm"),
    ("hunyuan_v1_moe", 4): ("inline", "HunYuanMoEV1Moe", "mixtral"),
    ("jamba", 4): ("inline", "JambaSparseMoeBlock", "qwen_no_norm"),
    ("granitemoe", 4): ("parallel_experts", "GraniteMoeTopKGating", "gpt_oss"),
    ("ernie4_5_moe", 4): ("inline", "Ernie4_5_MoeSparseMoeBlock", "ernie4_5"),
    ("dbrx", 4): ("dbrx_router", "DbrxRouter", "dbrx"),
    ("qwen3_vl_moe", 4): ("dense_inline", "Qwen3VLMoeTextSparseMoeBlock", "mixtral"),
    ("mixtral", 5): ("router", "MixtralTopKRouter", "mixtral"),
    ("qwen2_moe", 5): ("router", "Qwen2MoeTopKRouter", "qwen_no_norm"),
    ("qwen3_moe", 5): ("router", "Qwen3MoeTopKRouter", "mixtral"),
    ("olmoe", 5): ("router", "OlmoeTopKRouter", "mixtral"),
    ("qwen3_next", 5): ("router", "Qwen3NextTopKRouter", "mixtral"),
    ("deepseek_v3", 5): ("block_routes", "DeepseekV3TopkRouter", "deepseek_v3"),
    ("glm4_moe", 5): ("block_routes", "Glm4MoeTopkRouter", "deepseek_v3"),
    ("dots1", 5): ("block_routes", "Dots1TopkRouter", "deepseek_v3"),
    ("gpt_oss", 5): ("router", "GptOssTopKRouter", "gpt_oss"),
    ("llama4", 5): ("scaled_input", "Llama4Router", "llama4"),
    ("deepseek_v2", 5): ("block_routes", "DeepseekV2Moe", "qwen_no_norm"),
    ("hunyuan_v1_moe", 5): ("block_routes", "HunYuanMoEV1Moe", "mixtral"),
    ("jamba", 5): ("block_routes", "JambaSparseMoeBlock", "qwen_no_norm"),
    ("granitemoe", 5): ("parallel_experts", "GraniteMoeTopKGating", "gpt_oss"),
    ("ernie4_5_moe", 5): ("router", "Ernie4_5_MoeTopKRouter", "ernie4_5"),
    ("minimax_m2", 5): ("router", "MiniMaxM2TopKRouter", "minimax_m2"),
    ("qwen3_5_moe", 5): ("router", "Qwen3_5MoeTopKRouter", "mixtral"),
    ("afmoe", 5): ("token_choice_router", "AfmoeTokenChoiceRouter", "deepseek_v3"),
    ("lfm2_moe", 5): ("block_routes", "Lfm2MoeSparseMoeBlock", "given scores"),
}


def rule_name(rule):
    """A preset's name; "given scores" where the engine takes the model's
    own scores in place of logits (LFM2-MoE)."""
    return rule.get("preset") or ("given scores" if rule["score"] == "logits" else None)


def test_each_family_is_found_by_its_class_with_its_layout_and_rule():
    assert set(FOUND) == set(CASES)
    for (layout, version), want in FOUND.items():
        blocks = find_moe_blocks(make(layout, version))
        dense = 1 if layout in DENSE_FIRST_LAYOUTS else 0
        assert len(blocks) == 3 - dense
        assert {(b.layout, b.family, rule_name(b.routing.rule)) for b in blocks} == {want}


def renamed(cls, name):
    return type(name, (cls,), {})


# Families whose router (5.x) or block (4.x) is, at 5.2.0 / 4.57.6, another
# family's code under their own name: built here as that family's module
# renamed, each must be found with the rule of the family it copies.
CLONES = [
    (4, v4.MixtralSparseMoeBlock, "MiniMaxSparseMoeBlock", None, "mixtral"),
    (4, v4.OlmoeSparseMoeBlock, "FlexOlmoSparseMoeBlock", None, "mixtral"),
    (4, v4.DeepseekV3MoE, None, "Glm4vMoeTextTopkRouter", "deepseek_v3"),
    (5, v5.MixtralSparseMoeBlock, None, "MiniMaxTopKRouter", "mixtral"),
    (5, v5.OlmoeSparseMoeBlock, None, "FlexOlmoTopKRouter", "mixtral"),
    (5, v5.Qwen3_5MoeSparseMoeBlock, None, "Qwen3VLMoeTextTopKRouter", "mixtral"),
    (5, v5.DeepseekV3MoE, None, "Glm4vMoeTextTopkRouter", "deepseek_v3"),
    (5, v5.DeepseekV3MoE, None, "Glm4MoeLiteTopkRouter", "deepseek_v3"),
    (5, v5.DeepseekV3MoE, None, "GlmMoeDsaTopkRouter", "deepseek_v3"),
    (5, v5.DeepseekV3MoE, None, "SolarOpenTopkRouter", "deepseek_v3"),
    (5, v5.DeepseekV3MoE, None, "ExaoneMoeTopkRouter", "deepseek_v3"),
    (5, v5.Qwen3MoeSparseMoeBlock, None, "Qwen3OmniMoeThinkerTextTopKRouter", "mixtral"),
    (5, v5.Qwen2MoeSparseMoeBlock, None, "Qwen3OmniMoeTalkerTextTopKRouter", "mixtral"),
]


@pytest.mark.parametrize("clone", CLONES, ids=lambda c: c[2] or c[3])
def test_families_that_reuse_another_familys_code_are_found_by_their_names(clone):
    version, block_class, block_name, router_name, preset = clone
    config = TinyMoeLM("qwen3_5_moe" if version == 5 else "mixtral", layers=1,
                       version=version).config
    block = (renamed(block_class, block_name) if block_name else block_class)(config)
    if router_name:
        block.gate = renamed(type(block.gate), router_name)(config)
    found = find_moe_blocks(nn.Sequential(block))
    assert [(b.family, b.routing.rule["preset"]) for b in found] == \
        [(block_name or router_name, preset)]


def test_lfm2_moes_bfloat16_sigmoid_decides_where_a_float32_one_would_not():
    # Experts 2 and 3: sigmoids 0.62154 and 0.62246 in float32, both 0.62109
    # in bfloat16; expert 2's bias (+0.0005) then decides for the model,
    # where the float32 sigmoid plus the bias would take expert 3.
    torch.manual_seed(0)
    config = TinyMoeLM("lfm2_moe", layers=1, version=5).config
    block = v5.Lfm2MoeSparseMoeBlock(config).eval().to(torch.bfloat16)
    block.expert_bias = torch.zeros(8)
    logits = torch.tensor([3.0, -2.0, 0.49609375, 0.5, -2.0, -2.0, -2.0, -2.0])
    with torch.no_grad():
        block.gate.weight.zero_()
        block.gate.weight[:, 0] = logits
        block.expert_bias[2] = 0.0005
    x = torch.zeros(1, 1, config.hidden_size, dtype=torch.bfloat16)
    x[..., 0] = 1
    as_float32 = torch.topk(logits.sigmoid() + block.expert_bias, 2).indices
    assert sorted(as_float32.tolist()) == [0, 3]
    own, _ = block.route_tokens_to_experts(block.gate(x.view(1, -1)))
    assert sorted(own[0].tolist()) == [0, 2]
    model = nn.Sequential(block).eval()
    with torch.no_grad():
        want = model(x)
        handle = offload_experts(model, budget_bytes=4 * expert_bytes(model), bonus=0,
                                 prefetch=None)
        try:
            got = model(x)
        finally:
            handle.close()
    assert torch.equal(want, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_qwen3_omni_thinkers_experts_run_their_own_forward_whatever_the_implementation(dtype):
    # The thinker's experts class has no @use_experts_implementation: no
    # config, its eager loop always; the talker's has (the test above).
    torch.manual_seed(0)
    config = TinyMoeLM("qwen3_moe", layers=1, version=5).config
    config._experts_implementation = "batched_mm"
    block = v5.Qwen3MoeSparseMoeBlock(config)
    block.gate = renamed(type(block.gate), "Qwen3OmniMoeThinkerTextTopKRouter")(config)
    thinker_experts = type("Qwen3OmniMoeThinkerTextExperts", (v5.Qwen3MoeExperts,),
                           {"forward": v5.Qwen3MoeExperts.eager_forward})
    experts = thinker_experts(config)
    experts.load_state_dict(block.experts.state_dict())
    del experts.config
    block.experts = experts
    model = nn.Sequential(block).eval().to(dtype)
    inputs = [torch.randn(1, 4, config.hidden_size).to(dtype) for _ in range(6)]
    with torch.no_grad():
        want = [model(x) for x in inputs]
        handle = offload_experts(model, budget_bytes=4 * expert_bytes(model), bonus=0,
                                 prefetch=None)
        try:
            got = [model(x) for x in inputs]
            assert handle.stats()["evictions"] > 0
        finally:
            handle.close()
    assert all(torch.equal(a, b) for a, b in zip(want, got))


@pytest.mark.parametrize("version", [4, 5])
def test_jetmoes_mlp_is_granites_and_its_attention_experts_stay_resident(version):
    # JetMoeMoE is GraniteMoeMoE's arithmetic plus a bias (4.57.6, 5.2.0);
    # JetMoeMoA, its attention's experts under the same gating class, is
    # left in place.
    config = TinyMoeLM("granitemoe", layers=1, version=version).config
    modules = {4: v4, 5: v5}[version]
    mlp = renamed(modules.GraniteMoeMoE, "JetMoeMoE")(config)
    gating = renamed(type(mlp.router), "JetMoeTopKGating")
    mlp.router.__class__ = gating
    attention = renamed(modules.GraniteMoeMoE, "JetMoeMoA")(config)
    attention.router.__class__ = gating
    found = find_moe_blocks(nn.Sequential(attention, mlp))
    assert [(b.name, b.family, b.layout, b.routing.rule["preset"]) for b in found] == \
        [("1", "JetMoeTopKGating", "parallel_experts", "gpt_oss")]


def test_blocks_are_identified_by_their_router_or_block_class_and_refused_by_name():
    config = TinyMoeLM("mixtral", layers=1).config
    cases = [
        # Phi-3.5-MoE: Mixtral's shapes, another rule.
        (v4.PhimoeSparseMoeBlock(config), "PhimoeSparseMoeBlock: Phi-3.5-MoE routes by "
                                          "sparsemixer"),
        # A 4.x-shaped block of an unknown class.
        (renamed(v4.MixtralSparseMoeBlock, "SomeSparseMoeBlock")(config),
         "block SomeSparseMoeBlock is not one whose rule is known"),
        # A 5.x block with an unknown router class.
        (renamed(v5.MixtralSparseMoeBlock, "X")(config), None),
    ]
    cases[2][0].gate = renamed(v5.MixtralTopKRouter, "FancyTopKRouter")(config)
    cases[2] = (cases[2][0], "router FancyTopKRouter is not one whose rule is known")
    # Routing the engine does not have, by the router's class.
    for router, message in [
            ("SwitchTransformersTop1Router", "Switch Transformers routes with an expert capacity"),
            ("NllbMoeTop2Router", "NLLB-MoE routes with an expert capacity"),
            ("LongcatFlashTopkRouter", "LongCat-Flash routes to zero-computation experts"),
            ("GPTSanJapaneseTop1Router", "GPTSAN-japanese routes with an expert capacity"),
            ("Ernie4_5_VL_MoeMoeTopKRouter", "ERNIE 4.5 VL keeps a text and a vision set")]:
        block = v5.MixtralSparseMoeBlock(config)
        block.gate = renamed(v5.MixtralTopKRouter, router)(config)
        cases.append((block, f"{router}: {message}"))
    # 5.2.0's DBRX (its block chooses in route_tokens_to_experts).
    dbrx_5 = type("DbrxFFN", (v4.DbrxFFN,), {"route_tokens_to_experts": lambda self, l: l})
    cases.append((dbrx_5(config), "Transformers 5.2.0's DbrxFFN is not supported"))
    # DBRX experts that are not (experts x inner, hidden).
    dbrx = v4.DbrxFFN(config)
    dbrx.experts.mlp.v1 = nn.Parameter(torch.zeros(8 * 128, 63))
    cases.append((dbrx, "DBRX experts are not w1, v1 and w2 each of (experts x "
                        "ffn_hidden_size, hidden) = (8 x 128, 64)"))
    # Doge's retrieval experts: no `experts`, refused by the block's class.
    cases.append((renamed(nn.Linear, "DogeCDMoE")(4, 4), "Doge's experts are product-key"))
    for block, message in cases:
        model = nn.Sequential(block).eval()
        with pytest.raises(UnsupportedModel, match=re.escape(message)):
            offload_experts(model, 1 << 24)


def test_fused_layouts_and_rules_that_do_not_fit_are_refused_by_field():
    def model_with(change, layout="mixtral", **kwargs):
        model = TinyMoeLM(layout, layers=2, version=5, **kwargs).eval()
        change(moe_blocks(model)[-1])
        return model

    def wrong_shape(block):
        block.experts.gate_up_proj = nn.Parameter(torch.zeros(8, 100, 64))

    def implementation(block):
        block.experts.config._experts_implementation = "flash"

    def bias_length(block):
        block.gate.e_score_correction_bias = torch.zeros(7)

    def groups(block):
        block.n_group = 3

    def infinite_scale(block):
        block.routed_scaling_factor = float("inf")

    def llama4_shape(block):
        block.experts.down_proj = nn.Parameter(torch.zeros(8, 64, 128))

    def gpt_oss_bias(block):
        block.experts.down_proj_bias = nn.Parameter(torch.zeros(8, 63))

    def gpt_oss_no_bias(block):
        block.experts.gate_up_proj_bias = None

    cases = [
        (model_with(wrong_shape), "fused expert tensors of shapes (8, 100, 64) and "
                                  "(8, 64, 128) are not (E, 2I, H) and (E, H, I)"),
        (model_with(implementation), "experts implementation 'flash' is not one"),
        (model_with(bias_length, "deepseek_v3"), "e_score_correction_bias is not one float "
                                                 "per expert (8)"),
        (model_with(groups, "deepseek_v3"), "8 experts in n_group 3 keeping topk_group 2 "
                                            "cannot give top_k 2"),
        (model_with(infinite_scale, "deepseek_v3"), "routed_scaling_factor is not finite"),
        (model_with(gpt_oss_bias, "gpt_oss"), "GPT-OSS expert biases of shapes (8, 256) and "
                                              "(8, 63) are not (E, 2I) and (E, H)"),
        (model_with(gpt_oss_no_bias, "gpt_oss"), "lack gate_up_proj_bias and down_proj_bias"),
        (model_with(llama4_shape, "llama4"), "Llama 4 expert tensors of shapes (8, 64, 256) and "
                                             "(8, 64, 128) are not (E, H, 2I) and (E, I, H)"),
    ]
    for model, message in cases:
        with pytest.raises(UnsupportedModel, match=re.escape(message)):
            offload_experts(model, 1 << 24)


@pytest.mark.parametrize("layout", ["mixtral", "deepseek_v3", "qwen2_moe"])
def test_a_4x_model_fused_into_the_5x_layout_computes_the_same(layout):
    # As Transformers 5 fuses a 4.x checkpoint's per-expert tensors on load
    # (the demo trains in the 4.x layout, then fuses).
    model = make(layout, 4)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        want, _ = model(prompt)
        got, _ = fused(model)(prompt)
    assert torch.allclose(want, got, atol=1e-5)
