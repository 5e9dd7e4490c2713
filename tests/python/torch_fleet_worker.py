"""One process of the fleet tests: a small Mixtral-layout model offloaded with
moe-routerd at ARGV[1], generating from a prompt seeded by ARGV[2].

ARGV[3] "coactivation": the model "tiny-fleet", the router's bonus and
prefetch by what the fleet learned follows. ARGV[3] "taught": the model
"tiny-taught", bonus 0 and no prefetch, each layer call's gate logits saved
to ARGV[4] (an .npz) so the test can route the same tokens remotely.

Prints one JSON line: what its pool holds, what the server's view of its
cache holds after the last report, the tokens it routed, its budget."""
import json
import sys

import grpc
import numpy as np
import torch

from moe_router.torch import offload_experts
from moe_router.torch.tiny import TinyMoeLM
from moe_router.v1 import moe_router_pb2 as pb
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc


class LogitsCapture:
    """The engine, with each route call's layer and logits kept."""

    def __init__(self, engine):
        self.engine = engine
        self.calls = []

    def route(self, layer, logits, step):
        self.calls.append((layer, logits.copy()))
        self.engine.route(layer, logits, step)

    def __getattr__(self, name):
        return getattr(self.engine, name)


server, seed, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(0)  # the same weights in every process
model = TinyMoeLM("mixtral", layers=4).eval()
budget = 10 * 3 * 128 * 64 * 4
if mode == "coactivation":
    handle = offload_experts(model, budget_bytes=budget, server=server, model_name="tiny-fleet",
                             prefetch="coactivation")
else:
    handle = offload_experts(model, budget_bytes=budget, server=server, model_name="tiny-taught",
                             bonus=0, prefetch=None)
    handle.engine = LogitsCapture(handle.engine)
prompt = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(seed))
model.generate(prompt, 16)
flushed = handle.flush(30.0)
with grpc.insecure_channel(server) as channel:
    view = pb_grpc.MoeRouterStub(channel).OpenCache(pb.OpenCacheRequest(
        model=handle.model_name, cache=handle.cache_name, budget_bytes=handle.engine_budget))
server_view = sorted([r.layer, r.expert] for r in view.resident)
pool = [list(k) for k in handle.holds()]
if mode == "taught":
    calls = handle.engine.calls
    np.savez(sys.argv[4], layers=np.array([layer for layer, _ in calls]),
             **{f"logits{i}": logits for i, (_, logits) in enumerate(calls)})
print(json.dumps({"pool": pool, "server_view": server_view, "flushed": flushed,
                  "tokens": handle.stats()["tokens"], "budget": handle.engine_budget}))
handle.close()
