"""One process of the fleet test: a small Mixtral-layout model offloaded with
moe-routerd at ARGV[1], generating from a prompt seeded by ARGV[2]. Prints
one JSON line: what its pool holds, what the server's view of its cache
holds after the last report, and the tokens it routed."""
import json
import sys

import grpc
import torch

from moe_router.torch import offload_experts
from moe_router.torch.tiny import TinyMoeLM
from moe_router.v1 import moe_router_pb2 as pb
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc

server, seed = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)  # the same weights in every process
model = TinyMoeLM("mixtral", layers=4).eval()
handle = offload_experts(model, budget_bytes=10 * 3 * 128 * 64 * 4, server=server,
                         model_name="tiny-fleet", prefetch="coactivation")
prompt = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(seed))
model.generate(prompt, 16)
flushed = handle.flush(30.0)
with grpc.insecure_channel(server) as channel:
    view = pb_grpc.MoeRouterStub(channel).OpenCache(pb.OpenCacheRequest(
        model="tiny-fleet", cache=handle.cache_name, budget_bytes=handle.engine_budget))
server_view = sorted([r.layer, r.expert] for r in view.resident)
pool = [list(k) for k in handle.holds()]
print(json.dumps({"pool": pool, "server_view": server_view, "flushed": flushed,
                  "tokens": handle.stats()["tokens"]}))
handle.close()
