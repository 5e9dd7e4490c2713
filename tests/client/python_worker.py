"""Drives moe_router.WorkerCache (the Python package) through routing steps.

usage: python_worker.py PACKAGE_DIR ADDRESS MODEL CACHE BUDGET STEPS_JSON
STEPS_JSON: [[layer, [logits...]], ...]. Prints one JSON line per step with
the answer and what the worker then holds, for the C++ test to compare.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
import grpc  # noqa: E402
from moe_router import WorkerCache  # noqa: E402

address, model, cache_name, budget, steps_path = sys.argv[2:7]
channel = grpc.insecure_channel(address)
cache = WorkerCache(channel, model, cache_name, int(budget))
with open(steps_path) as f:
    steps = json.load(f)
for layer, logits in steps:
    routed = cache.route(layer, logits)
    for e in set(routed.experts):
        assert cache.get(layer, e)
    print(json.dumps({
        "experts": list(routed.experts),
        "resident": list(routed.resident),
        "urgent": sorted([r.layer, r.expert] for r in routed.urgent_page_ins),
        "evictions": sorted([r.layer, r.expert] for r in routed.evictions),
        "held": sorted([l, e] for l, e in cache.held),
        "held_bytes": cache.held_bytes,
    }), flush=True)
cache.close()
