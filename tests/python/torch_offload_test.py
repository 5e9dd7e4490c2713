"""moe_router.torch on Debian's PyTorch: small models the tests build in each
supported layout, offloaded with the native engine.

Run by CTest (tests/python/CMakeLists.txt) with the built package on
PYTHONPATH; the fleet test also gets MOE_ROUTER_SERVER, a moe-routerd the
C++ wrapper started on port 0.
"""

import json
import os
import re
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from moe_router.torch import ExpertLoadError, UnsupportedModel, offload_experts
from moe_router.torch.tiny import TinyMoeLM

def make_model(layout, seed=0, layers=4, experts=8, top_k=2, version=4):
    torch.manual_seed(seed)
    return TinyMoeLM(layout, layers=layers, experts=experts, top_k=top_k, version=version).eval()


def expert_bytes(model):
    # Three (inner x hidden) matrices of float32 per expert (fused or not).
    return 3 * 128 * 64 * 4


def blocks_of(model):
    return [m for layer in model.layers for m in layer.children() if hasattr(m, "experts")]


def test_the_pool_stays_in_budget_and_equals_the_engine_view_after_every_layer():
    model = make_model("mixtral", layers=6)
    budget = 10 * expert_bytes(model) + 100  # not a whole number of experts
    handle = offload_experts(model, budget_bytes=budget, prefetch="gate_guess")
    checked = []

    def check(layer):
        def hook(module, args, output):
            assert len(handle.holds()) * handle.expert_bytes <= budget
            assert handle.holds() == handle.engine_view()
            checked.append(layer)
        return hook

    hooks = [b.register_forward_hook(check(i)) for i, b in enumerate(blocks_of(model))]
    try:
        model.generate(torch.tensor([[7, 8, 9]]), 20)
    finally:
        for h in hooks:
            h.remove()
        stats = handle.stats()
        handle.close()
    assert len(checked) == 6 * 21
    assert stats["slots"] == 10 and stats["loads"] > 10
    assert stats["bytes_moved"] == stats["loads"] * stats["expert_bytes"]
    assert 0 < stats["hit_rate"] < 1 and stats["gate_guess_accuracy"] is not None


def test_a_chosen_expert_is_loaded_before_its_layer_computes_and_never_dropped_first():
    model = make_model("qwen2_moe", layers=4)
    handle = offload_experts(model, budget_bytes=5 * expert_bytes(model), prefetch="gate_guess")
    runtime_experts = handle._experts
    seen = []

    def experts(layer, x, chosen, weights):
        for e in chosen.unique().tolist():
            assert (layer, e) in handle.holds(), f"layer {layer} expert {e} not held"
        seen.append(layer)
        return runtime_experts(layer, x, chosen, weights)

    handle._experts = experts
    try:
        model.generate(torch.tensor([[1, 2]]), 15)
    finally:
        handle.close()
    assert len(seen) == 4 * 16


def test_a_failed_load_fails_the_step_by_name_and_leaves_pool_and_view_alike():
    model = make_model("mixtral", layers=3)
    handle = offload_experts(model, budget_bytes=4 * expert_bytes(model), bonus=0, prefetch=None)
    try:
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
            missing = next((layer, e) for layer in range(3) for e in range(8)
                           if (layer, e) not in handle.holds())
            handle.store.pop(missing)  # a missing tensor
            with pytest.raises(ExpertLoadError, match=re.escape(str(missing))):
                for _ in range(40):
                    model(torch.randint(0, 256, (1, 4)))
            assert handle.holds() == handle.engine_view()
            assert missing not in handle.holds()
    finally:
        handle.close()


def damp_residual_updates(model, scale=1e-3):
    """The attention's and the experts' outputs scaled down: each layer's
    input is nearly the one before it, so a layer's gate applied to the
    previous layer's input is nearly what it will see."""
    with torch.no_grad():
        for layer in model.layers:
            layer.out.weight.mul_(scale)
            for expert in layer.block_sparse_moe.experts:
                expert.w2.weight.mul_(scale)


def test_the_gate_guess_prefetches_with_the_next_layers_gate():
    model = make_model("mixtral", layers=6, seed=3)
    damp_residual_updates(model)
    blocks = blocks_of(model)
    # Consecutive gates differ: on the same input they mostly choose apart.
    x = torch.randn(64, 64)
    same = [(torch.topk(blocks[l].gate(x), 2).indices.sort().values ==
             torch.topk(blocks[l + 1].gate(x), 2).indices.sort().values).all(dim=1).float().mean()
            for l in range(5)]
    assert max(same) < 0.5
    prompt = torch.tensor([[5, 6, 7]])
    rates = {}
    for prefetch in ("gate_guess", None):
        handle = offload_experts(model, budget_bytes=24 * expert_bytes(model), bonus=0,
                                 prefetch=prefetch)
        try:
            model.generate(prompt, 30)
            stats = handle.stats()
        finally:
            handle.close()
        rates[prefetch] = stats
    # The guess is made with the next layer's own gate: nearly always right
    # here (another layer's gate would be right about as often as chance),
    # and its prefetches make experts ready before they are asked for.
    assert rates["gate_guess"]["gate_guess_accuracy"] > 0.9
    assert rates["gate_guess"]["ready_rate"] > rates[None]["ready_rate"] + 0.1


def test_unsupported_blocks_and_models_are_refused_by_name():
    with pytest.raises(UnsupportedModel, match="no sparse-MoE block"):
        offload_experts(nn.Sequential(nn.Linear(4, 4)).eval(), 1 << 20)
    model = make_model("mixtral")
    model.layers[1].block_sparse_moe.gate = nn.Linear(64, 8, bias=True)
    with pytest.raises(UnsupportedModel, match="layers.1.block_sparse_moe: the gate has a bias"):
        offload_experts(model, 1 << 20)
    model = make_model("qwen3_moe")
    del model.layers[2].mlp.norm_topk_prob
    with pytest.raises(UnsupportedModel, match="norm_topk_prob"):
        offload_experts(model, 1 << 20)
    model = make_model("mixtral")
    model.layers[0].block_sparse_moe.experts[3] = nn.Linear(64, 64)
    with pytest.raises(UnsupportedModel, match="expert 3 \\(Linear\\) has no w1; the layout expects w1/w3/w2"):
        offload_experts(model, 1 << 20)
    model = make_model("mixtral")
    with pytest.raises(ValueError, match="a layer needs 2"):
        offload_experts(model, expert_bytes(model))
    with pytest.raises(UnsupportedModel, match="training mode"):
        offload_experts(make_model("mixtral").train(), 1 << 20)


def experts_of(model):
    return {name: t for name, t in model.state_dict().items() if ".experts." in name}


def write_safetensors(path, tensors):
    """A safetensors file as the format specifies: the header's length, the
    JSON header, the tensors' bytes; returns each tensor's data offset."""
    names = {torch.float32: "F32", torch.float16: "F16"}
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.detach().contiguous().numpy().tobytes()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    return {name: 8 + len(encoded) + h["data_offsets"][0] for name, h in header.items()}


def test_experts_read_from_a_checkpoint_compute_what_the_model_does(tmp_path):
    source = make_model("qwen3_moe", layers=3)
    write_safetensors(tmp_path / "model.safetensors", experts_of(source))
    prompt = torch.tensor([[9, 8, 7]])
    tokens, _ = source.generate(prompt, 10)
    model = make_model("qwen3_moe", layers=3)  # the same weights, then its experts wiped
    with torch.no_grad():
        for name, tensor in experts_of(model).items():
            tensor.zero_()
    handle = offload_experts(model, budget_bytes=5 * expert_bytes(model), bonus=0,
                             prefetch="gate_guess", checkpoint=str(tmp_path))
    try:
        offloaded, _ = model.generate(prompt, 10)
        stats = handle.stats()
    finally:
        handle.close()
    assert torch.equal(offloaded, tokens)  # computed with the checkpoint's experts
    assert stats["loads"] > 5 and stats["failed_loads"] == 0


def test_a_mismatched_checkpoint_is_refused_by_name(tmp_path):
    model = make_model("mixtral", layers=2)
    prefix = "layers.1.block_sparse_moe.experts."
    cases = [
        ("missing", lambda t: t.pop(prefix + "3.w2.weight"),
         f"no tensor '{prefix}3.w2.weight'"),
        ("shape", lambda t: t.update({prefix + "5.w1.weight": torch.zeros(64, 64)}),
         re.escape(f"tensor '{prefix}5.w1.weight' is F32 [64, 64], the model's is "
                   f"torch.float32 [128, 64]")),
        ("dtype", lambda t: t.update({prefix + "0.w3.weight": t[prefix + "0.w3.weight"].half()}),
         f"tensor '{prefix}0.w3.weight' is F16"),
        ("extra", lambda t: t.update({prefix + "2.w1.bias": torch.zeros(128)}),
         "does not compute with.*" + re.escape(prefix + "2.w1.bias")),
        ("expert", lambda t: [t.pop(n) for n in list(t) if n.startswith(prefix + "7.")],
         "not found"),
    ]
    for case, change, message in cases:
        directory = tmp_path / case
        directory.mkdir()
        tensors = experts_of(model)
        change(tensors)
        write_safetensors(directory / "model.safetensors", tensors)
        with pytest.raises(UnsupportedModel, match=message):
            offload_experts(model, 1 << 20, checkpoint=str(directory))
    with pytest.raises(UnsupportedModel, match="fused expert tensors cannot be read"):
        offload_experts(make_model("mixtral", version=5), 1 << 20, checkpoint=str(tmp_path / "shape"))
    with pytest.raises(UnsupportedModel, match="checkpoint .*nowhere"):
        offload_experts(model, 1 << 20, checkpoint=str(tmp_path / "nowhere"))


def expect_layer_one_fails(model, handle, match):
    """A forward pass whose layer-1 loads all fail: ExpertLoadError saying
    `match`, and after it the pool and the engine's view alike, holding
    layer 0's experts only."""
    with pytest.raises(ExpertLoadError, match=match):
        with torch.no_grad():
            model(torch.tensor([[1, 2, 3]]))
    assert handle.holds() == handle.engine_view()
    assert all(layer == 0 for layer, _ in handle.holds())


def test_a_checkpoint_corrupted_after_opening_fails_the_load_by_tensor(tmp_path):
    model = make_model("mixtral", layers=2)
    path = tmp_path / "model.safetensors"
    offsets = write_safetensors(path, experts_of(model))
    handle = offload_experts(model, budget_bytes=4 * expert_bytes(model), bonus=0,
                             prefetch=None, checkpoint=str(tmp_path))

    def flip_layer_one():  # a byte of every layer-1 expert's w2, on disk
        with open(path, "r+b") as f:
            for e in range(8):
                f.seek(offsets[f"layers.1.block_sparse_moe.experts.{e}.w2.weight"])
                byte = f.read(1)[0]
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([byte ^ 0xFF]))

    try:
        flip_layer_one()
        expect_layer_one_fails(model, handle, r"checksum mismatch .*experts\.\d\.w2\.weight")
        assert handle.stats()["failed_loads"] > 0
        # Mended, the file loads again, and the failed loads gave their slots
        # back: the pool fills its whole budget (a slot kept by each failure
        # would leave it short, and its loads would find no free slot).
        flip_layer_one()
        most = 0
        with torch.no_grad():
            for seed in range(30):
                torch.manual_seed(seed)
                model(torch.randint(0, 256, (1, 4)))
                most = max(most, len(handle.holds()))
                assert handle.holds() == handle.engine_view()
        assert most == handle.pool.slots == 4
    finally:
        handle.close()


def register_fetchable(server, name, directory, layers):
    """A model registered at `server` on the checkpoint in `directory`, as
    an operator would, so that FetchExpert serves its experts."""
    import grpc
    from moe_router.v1 import moe_router_pb2 as pb
    from moe_router.v1 import moe_router_pb2_grpc as pb_grpc
    spec = pb.ModelSpec(name=name, num_layers=layers, num_experts=8, top_k=2,
                        budget_bytes=4 * expert_bytes(None))
    spec.safetensors.directory = str(directory)
    spec.safetensors.pattern = "layers.{layer}.block_sparse_moe.experts.{expert}."
    with grpc.insecure_channel(server) as channel:
        pb_grpc.MoeRouterStub(channel).RegisterModel(pb.RegisterModelRequest(spec=spec))


def start_lying_relay(upstream, lie):
    """A MoeRouter service that relays ListModels and FetchExpert from
    `upstream`, passing each FetchExpert chunk through lie(request, chunk)."""
    from concurrent.futures import ThreadPoolExecutor
    import grpc
    from moe_router.v1 import moe_router_pb2_grpc as pb_grpc

    class Relay(pb_grpc.MoeRouterServicer):
        def __init__(self):
            self.stub = pb_grpc.MoeRouterStub(grpc.insecure_channel(upstream))

        def ListModels(self, request, context):
            return self.stub.ListModels(request)

        def FetchExpert(self, request, context):
            for chunk in self.stub.FetchExpert(request):
                yield lie(request, chunk)

    relay = grpc.server(ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_MoeRouterServicer_to_server(Relay(), relay)
    port = relay.add_insecure_port("127.0.0.1:0")
    relay.start()
    return relay, f"127.0.0.1:{port}"


def test_experts_fetched_from_the_server_compute_what_the_model_does(tmp_path):
    server = server_address()
    source = make_model("mixtral", layers=3)
    write_safetensors(tmp_path / "model.safetensors", experts_of(source))
    register_fetchable(server, "tiny-fetch", tmp_path, 3)
    prompt = torch.tensor([[4, 5, 6]])
    tokens, _ = source.generate(prompt, 10)
    model = make_model("mixtral", layers=3)
    with torch.no_grad():
        for tensor in experts_of(model).values():
            tensor.zero_()
    handle = offload_experts(model, budget_bytes=5 * expert_bytes(model), bonus=0,
                             prefetch="gate_guess", expert_server=server, model_name="tiny-fetch")
    try:
        offloaded, _ = model.generate(prompt, 10)
        stats = handle.stats()
    finally:
        handle.close()
    assert torch.equal(offloaded, tokens)  # computed with the fetched experts
    assert stats["loads"] > 5 and stats["failed_loads"] == 0
    with pytest.raises(UnsupportedModel, match="model 'tiny-absent' at .* is not registered"):
        offload_experts(model, 1 << 20, expert_server=server, model_name="tiny-absent")
    with pytest.raises(UnsupportedModel, match=re.escape(
            "no tensor 'layers.0.mlp.experts.0.gate_proj.weight'")):
        offload_experts(make_model("qwen3_moe", layers=3), 1 << 20, expert_server=server,
                        model_name="tiny-fetch")


def test_a_lying_fetch_expert_fails_the_load_by_name_and_leaves_pool_and_view_alike(tmp_path):
    server = server_address()
    model = make_model("mixtral", layers=2)
    write_safetensors(tmp_path / "model.safetensors", experts_of(model))
    register_fetchable(server, "tiny-lied-about", tmp_path, 2)

    def lie(request, chunk):  # a flipped byte in every layer-1 expert
        if request.layer == 1 and chunk.data:
            data = bytearray(chunk.data)
            data[0] ^= 0xFF
            chunk.data = bytes(data)
        return chunk

    relay, address = start_lying_relay(server, lie)
    handle = offload_experts(model, budget_bytes=4 * expert_bytes(model), bonus=0,
                             prefetch=None, expert_server=address, model_name="tiny-lied-about")
    try:
        expect_layer_one_fails(
            model, handle,
            r"DATA_LOSS: expert L1/E\d: tensor '.*' arrived with a different checksum")
    finally:
        handle.close()
        relay.stop(None)


@pytest.mark.parametrize("layout,version,moe_layers", [("mixtral", 4, 4), ("deepseek_v3", 5, 3)])
def test_recorded_routing_is_a_trace_the_replay_reads(tmp_path, layout, version, moe_layers):
    # DeepSeek-V3's first layer is dense; its weights are the rule's: the
    # unbiased sigmoids over their sum, times routed_scaling_factor (2.5).
    model = make_model(layout, layers=4, version=version)
    trace = tmp_path / "routing.jsonl"
    handle = offload_experts(model, budget_bytes=8 * expert_bytes(model), bonus=0, prefetch=None,
                             record=str(trace))
    model.generate(torch.tensor([[5, 6, 7]]), 10)
    scale = handle.blocks[0].routing.rule.get("scaling", 1.0)
    handle.close()
    lines = [json.loads(line) for line in trace.read_text().splitlines()]
    assert len(lines) == moe_layers * (3 + 10)  # prompt tokens, then one per step, per layer
    assert {line["layer"] for line in lines} == set(range(moe_layers))
    assert all(len(line["experts"]) == 2 for line in lines)
    assert all(abs(sum(line["gating_probs"]) - scale) < 1e-5 for line in lines)
    # The prompt's three tokens, prefilled in one call, are marked so.
    assert {line["token_idx"] for line in lines if line["phase"] == "prompt"} == {0, 1, 2}
    cli = os.environ.get("MOE_ROUTER_CLI")
    if cli:
        out = subprocess.run([cli, "trace", "stats", str(trace), "--json"], capture_output=True,
                             text=True, check=True).stdout
        stats = json.loads(out)
        assert stats["num_layers"] == moe_layers and stats["tokens"] == 13
        assert stats["top_k"] == 2 and stats["prompt_tokens"] == 3
        replay = subprocess.run([cli, "replay", str(trace), "--global-slots", "8", "--json"],
                                capture_output=True, text=True, check=True).stdout
        assert json.loads(replay)["accesses"] == moe_layers * 13 * 2


def fleet_runs(server, mode, seeds, tmp_path=None):
    script = os.path.join(os.path.dirname(__file__), "torch_fleet_worker.py")
    views = []
    for seed in seeds:  # one after the other: the second starts from what the first taught
        extra = [str(tmp_path / f"calls{seed}.npz")] if tmp_path else []
        run = subprocess.run([sys.executable, script, server, str(seed), mode] + extra,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        views.append(json.loads(run.stdout.splitlines()[-1]))
    for view in views:
        assert view["flushed"]
        assert view["pool"] == view["server_view"]  # the service's view of each pool is exact
    return views


def model_stats(server, model):
    import grpc
    from moe_router.v1 import moe_router_pb2 as pb
    from moe_router.v1 import moe_router_pb2_grpc as pb_grpc
    with grpc.insecure_channel(server) as channel:
        return pb_grpc.MoeRouterStub(channel).GetModelStats(pb.GetModelStatsRequest(model=model))


def server_address():
    server = os.environ.get("MOE_ROUTER_SERVER")
    if not server:
        pytest.skip("MOE_ROUTER_SERVER not set (the C++ wrapper starts one)")
    return server


def test_two_processes_learn_through_the_server():
    server = server_address()
    views = fleet_runs(server, "coactivation", (1, 2))
    # The model learned from every token of both: each layer call reported.
    stats = model_stats(server, "tiny-fleet")
    assert stats.routed_tokens == sum(view["tokens"] for view in views) * 4


def test_offloaded_workers_teach_the_model_what_the_same_tokens_routed_remotely_do(tmp_path):
    import grpc
    from moe_router.torch.fleet import register_model
    from moe_router.v1 import moe_router_pb2 as pb
    from moe_router.v1 import moe_router_pb2_grpc as pb_grpc
    from moe_router.torch.fleet import model_spec
    server = server_address()
    # Two models of one spec, learning without decay: folding a report is
    # then exactly routing its tokens (with decay, the order of the tokens
    # within a report, which it does not carry, moves the scores a little).
    for name in ("tiny-taught", "tiny-remote"):
        spec = model_spec(name, 4, 8, 2, expert_bytes(None), bonus=0, prefetch_next_layer=0,
                          prefetch_threshold=0.0)
        spec.affinity.decay = 1.0
        spec.affinity.coactivation_decay = 1.0
        register_model(server, spec)
    views = fleet_runs(server, "taught", (3, 4), tmp_path)  # the workers use "tiny-taught"
    # The same gate logits, call by call, routed by the service for worker
    # caches of the same budgets on "tiny-remote".
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.MoeRouterStub(channel)
        for seed, view in zip((3, 4), views):
            cache = f"remote-{seed}"
            stub.OpenCache(pb.OpenCacheRequest(model="tiny-remote", cache=cache,
                                               budget_bytes=view["budget"]))
            calls = np.load(tmp_path / f"calls{seed}.npz")
            for i, layer in enumerate(calls["layers"]):
                stub.RouteTokens(pb.RouteTokensRequest(
                    model="tiny-remote", layer=int(layer), cache=cache,
                    gate_logits=calls[f"logits{i}"].ravel().tolist()))
            remote = stub.OpenCache(pb.OpenCacheRequest(model="tiny-remote", cache=cache,
                                                        budget_bytes=view["budget"]))
            assert sorted([r.layer, r.expert] for r in remote.resident) == view["pool"]
    taught, routed = model_stats(server, "tiny-taught"), model_stats(server, "tiny-remote")
    assert taught.routed_tokens == routed.routed_tokens == sum(v["tokens"] for v in views) * 4
    assert len(taught.layers) == len(routed.layers) == 4
    for a, b in zip(taught.layers, routed.layers):
        assert (a.routed_tokens, a.hits, a.misses) == (b.routed_tokens, b.hits, b.misses)
    # The learned state itself (affinity, co-activation, the logit range) is
    # compared by the C++ wrapper, which reads both models' state.
    with pytest.raises(RuntimeError, match=re.escape("has (layers, experts, top_k) (4, 8, 2); "
                                                     "this model's are (3, 8, 2)")):
        offload_experts(make_model("mixtral", layers=3), 1 << 20, server=server,
                        model_name="tiny-taught", prefetch=None)


def test_the_demo_trains_and_tables_a_deepseek_layout(capsys):
    from moe_router.torch import demo
    demo.main(["--layout", "deepseek", "--layers", "3", "--hidden", "64", "--inner", "128",
               "--train-steps", "2", "--tokens", "4"])
    out = capsys.readouterr().out
    assert "trained 2 steps" in out
    assert "deepseek layout (Transformers 5, DeepseekV3TopkRouter): 2 MoE layers after 1 " \
           "dense x 16 experts, top-4" in out
    rows = [line.split() for line in out.splitlines() if line.lstrip().startswith(("25%", "50%",
                                                                                  "100%"))]
    assert [(r[0], r[1]) for r in rows] == [(share, mode) for share in ("25%", "50%", "100%")
                                            for mode in ("lru", "moe-router")]
    # LRU paging at bonus 0 generates the all-resident tokens exactly.
    assert all(float(r[9]) == 1.0 for r in rows if r[1] == "lru")

