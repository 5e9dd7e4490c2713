import sys, time
sys.path.insert(0, "/work/main/build-test/python")
import grpc
from moe_router import fetch_expert, routing_headers
from moe_router.v1 import moe_router_pb2 as pb, moe_router_pb2_grpc as pbg
target=sys.argv[1]
a = pbg.MoeRouterStub(grpc.insecure_channel(target))
b = pbg.MoeRouterStub(grpc.insecure_channel(target))
it = a.FetchExpert(pb.FetchExpertRequest(model="big", layer=1, expert=5), metadata=routing_headers("big", "fx"))
next(it)
print("big fetch open", flush=True)
for i in range(8):
    t=time.time()
    try:
        d = fetch_expert(b, "mixtral-8x7b", i, i % 8, timeout=3)
        print("small fetch", i, len(d), "%.3fs" % (time.time()-t), flush=True)
    except Exception as e:
        print("small fetch", i, "failed", type(e).__name__, str(e)[:100], flush=True)
