"""Drives moe_router._engine (the native in-process engine) through steps.

usage: python_engine.py PACKAGE_DIR ADDRESS MODEL CACHE BUDGET TOKENS STEPS_JSON
STEPS_JSON: [[layer, [logits...]], ...] (TOKENS rows of each layer's experts).
Prints one JSON line per step, then the control stream's figures, for the
C++ test to compare with the C++ engine.
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
import numpy as np  # noqa: E402
from moe_router import _engine  # noqa: E402

address, model, cache_name, budget, tokens, steps_path = sys.argv[2:8]
worker = _engine.InProcessWorker(address, model, cache_name, int(budget), report_interval_s=0.02)
step = _engine.Step()
with open(steps_path) as f:
    steps = json.load(f)
for layer, logits in steps:
    batch = np.asarray(logits, dtype=np.float32).reshape(int(tokens), -1)
    worker.route(layer, batch, step)
    # The answer is a view of the step's own buffers, not a copy.
    assert step.experts.base is not None and step.experts.shape == (int(tokens), 2)
    print(json.dumps({
        "experts": step.experts.ravel().tolist(),
        "weights": step.weights.ravel().tolist(),
        "resident": step.resident.ravel().tolist(),
        "evictions": step.evictions.tolist(),
        "urgent": step.urgent.tolist(),
        "prefetch": step.prefetch.tolist(),
    }), flush=True)
assert worker.flush(30.0), "the service did not acknowledge the last report"
print(json.dumps({"control": worker.control_stats(),
                  "residency": sorted(list(p) for p in worker.residency())}), flush=True)
worker.close()
try:
    worker.route(0, np.zeros((1, 8), dtype=np.float32), step)
    raise AssertionError("a closed worker routed")
except RuntimeError as e:
    assert "closed" in str(e), e
