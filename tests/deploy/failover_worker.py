"""A Python WorkerCache worker for the scale-out test's replica faults.

usage: failover_worker.py PACKAGE_DIR ADDRESS MODEL CACHE BUDGET LAYERS EXPERTS STOP_FILE SEED
       [route-only]

Routes one-token steps through every layer (random logits) until STOP_FILE
exists, fetching the experts each step chooses (route-only: never, so the
call a lost replica catches is a route). On stderr: "ready" after its first step, "steps N failovers F" after
each, and last a JSON line with what it holds, its failovers and reopens.
It leaves its cache open: the test compares the server's view with it. A
failed step raises, and the process exits non-zero.
"""
import json
import os
import random
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from moe_router import WorkerCache  # noqa: E402

address, model, cache_name, budget, layers, experts, stop_file, seed = sys.argv[2:10]
route_only = sys.argv[10:] == ["route-only"]
rng = random.Random(int(seed))
cache = WorkerCache(grpc.insecure_channel(address), model, cache_name, int(budget))
steps = 0
while not os.path.exists(stop_file):
    for layer in range(int(layers)):
        routed = cache.route(layer, [rng.gauss(0, 2) for _ in range(int(experts))])
        for e in set(routed.experts) if not route_only else ():
            assert cache.get(layer, e)
    steps += 1
    if steps == 1:
        print("ready", file=sys.stderr, flush=True)
    print(f"steps {steps} failovers {cache.failovers}", file=sys.stderr, flush=True)
print(json.dumps({"held": sorted([l, e] for l, e in cache.held), "failovers": cache.failovers,
                  "reopens": cache.reopens, "steps": steps}), file=sys.stderr, flush=True)
