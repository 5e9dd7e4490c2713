#!/usr/bin/python3
"""Routes tokens through moe-routerd with Debian's python3-grpcio.

Usage: interop_client.py STUB_DIR ADDRESS MODEL LAYER LOGIT...
Prints one JSON object: experts, weights, resident. The stubs in STUB_DIR
are generated from the proto by grpc_python_plugin at build time.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from moe_router.v1 import moe_router_pb2, moe_router_pb2_grpc  # noqa: E402


def main():
    address, model, layer = sys.argv[2], sys.argv[3], int(sys.argv[4])
    logits = [float(x) for x in sys.argv[5:]]
    with grpc.insecure_channel(address) as channel:
        stub = moe_router_pb2_grpc.MoeRouterStub(channel)
        response = stub.RouteTokens(
            moe_router_pb2.RouteTokensRequest(model=model, layer=layer, gate_logits=logits),
            timeout=10)
    print(json.dumps({"experts": list(response.experts),
                      "weights": list(response.weights),
                      "resident": list(response.resident)}))


if __name__ == "__main__":
    main()
