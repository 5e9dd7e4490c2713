"""Per-layer cost of the native in-process engine called from Python.

usage: python_engine_bench.py PACKAGE_DIR ADDRESS
Registers 32x8 top-2 and 58x256 top-8 synthetic models on a running
moe-routerd, opens one in-process worker per model with a quarter of the
experts as its budget, and times route() on 64-token float32 batches (the
median of 5 runs of 2000 calls), beside remote RouteTokens with the same
cache from the pure-Python stubs.
"""
import statistics
import sys
import time

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from moe_router import _engine  # noqa: E402
from moe_router.v1 import moe_router_pb2 as pb  # noqa: E402
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc  # noqa: E402

address = sys.argv[2]
stub = pb_grpc.MoeRouterStub(grpc.insecure_channel(address))
EXPERT_BYTES = 1024
for layers, experts, top_k in ((32, 8, 2), (58, 256, 8)):
    name = f"bench-{layers}x{experts}"
    stub.RegisterModel(pb.RegisterModelRequest(spec=pb.ModelSpec(
        name=name, num_layers=layers, num_experts=experts, top_k=top_k,
        budget_bytes=layers * experts * EXPERT_BYTES,
        synthetic=pb.SyntheticStoreSpec(expert_bytes=EXPERT_BYTES))))
    budget = layers * experts // 4 * EXPERT_BYTES
    rng = np.random.default_rng(1)
    batches = [rng.normal(0, 1.5, (64, experts)).astype(np.float32) for _ in range(8)]
    worker = _engine.InProcessWorker(address, name, "py-bench", budget)
    step = _engine.Step()

    def in_process(calls):
        start = time.perf_counter()
        for i in range(calls):
            layer = i % layers
            worker.route(layer, batches[(i // layers + layer) % 8], step)
        return (time.perf_counter() - start) / calls * 1e6

    stub.OpenCache(pb.OpenCacheRequest(model=name, cache="py-remote", budget_bytes=budget))
    requests = [pb.RouteTokensRequest(model=name, layer=layer, cache="py-remote",
                                      gate_logits=batches[layer % 8].ravel().tolist())
                for layer in range(layers)]

    def remote(calls):
        start = time.perf_counter()
        for i in range(calls):
            stub.RouteTokens(requests[i % layers])
        return (time.perf_counter() - start) / calls * 1e6

    in_process(500)
    local_us = statistics.median(in_process(2000) for _ in range(5))
    remote_us = statistics.median(remote(300) for _ in range(5))
    print(f"{name} top-{top_k}: in-process from Python {local_us:.1f} us per layer call, "
          f"remote RouteTokens from Python {remote_us:.1f} us ({remote_us / local_us:.0f}x)")
    worker.close()
