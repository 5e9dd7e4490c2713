"""Routes given logits with the native LocalEngine under a given rule and
prints each call's experts and weights as one JSON line.

usage: python_rules.py PACKAGE_DIR CASES.json
CASES: [{"name", "routing": {...}, "bias": [...] or null, "layers", "experts",
         "top_k", "logits": [[layer, [[...], ...]], ...]}, ...]
"""
import json
import sys

sys.path.insert(0, sys.argv[1])
import numpy as np  # noqa: E402

from moe_router import _engine  # noqa: E402

for case in json.load(open(sys.argv[2])):
    bias = None
    if case["bias"] is not None:
        bias = np.array(case["bias"], dtype=np.float32).reshape(case["layers"], case["experts"])
    engine = _engine.LocalEngine(case["layers"], case["experts"], case["top_k"], 1000,
                                 1000 * case["layers"] * case["experts"], cache_bonus=0.0,
                                 routing=case["routing"], choice_bias=bias)
    step = _engine.Step()
    for layer, rows in case["logits"]:
        engine.route(layer, np.array(rows, dtype=np.float32), step)
        print(json.dumps({"name": case["name"], "experts": np.asarray(step.experts).ravel().tolist(),
                          "weights": np.asarray(step.weights).ravel().tolist()}))
    engine.close()
# A setting it does not know is refused by name.
try:
    _engine.LocalEngine(2, 8, 2, 1000, 8000, routing={"groups": 2})
    print("accepted an unknown setting")
except ValueError as e:
    print(json.dumps({"refused": str(e)}))
