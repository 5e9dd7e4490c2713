#!/usr/bin/env bash
# `pip install ./python` from a clean tree of this checkout (its tracked and
# untracked, not ignored, files: no build tree) into a fresh venv that sees
# Debian's numpy and torch, offline; then the installed package, not the
# build tree, routes and offloads.
set -euo pipefail
source_dir="$1"
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

mkdir "$scratch/src"
(cd "$source_dir" && git ls-files -z --cached --others --exclude-standard |
  xargs -0 cp --parents -t "$scratch/src")
/usr/bin/python3 -m venv --system-site-packages "$scratch/venv"
"$scratch/venv/bin/pip" install --no-index --quiet "$scratch/src/python"

cd "$scratch"  # nothing named moe_router here: the import must find the venv's
"$scratch/venv/bin/python" - "$scratch/venv" <<'EOF'
import sys

import numpy as np
import torch

import moe_router
import moe_router.torch
from moe_router import InProcessWorker, LocalEngine

venv = sys.argv[1]
assert moe_router.__file__.startswith(venv), moe_router.__file__
assert InProcessWorker.__module__.startswith("moe_router"), InProcessWorker.__module__

# The installed native engine routes: two layers of four experts, top-2.
engine = LocalEngine(num_layers=2, num_experts=4, top_k=2, expert_bytes=1,
                     budget_bytes=8, cache_bonus=0.0)
step = moe_router.Step()
engine.route(0, np.array([[0.0, 3.0, 1.0, 2.0]], dtype=np.float32), step)
assert sorted(step.experts[0].tolist()) == [1, 3], step.experts

# And the installed moe_router.torch offloads a model the test builds.
from moe_router.torch.tiny import TinyMoeLM
torch.manual_seed(0)
model = TinyMoeLM(layers=2, experts=4, top_k=2, hidden=16, heads=2, inner=32, vocab=32).eval()
prompt = torch.randint(0, 32, (1, 5))
expected, _ = model.generate(prompt, 4)
handle = moe_router.torch.offload_experts(model, budget_bytes=10**9, bonus=0.0, prefetch=None)
got, _ = model.generate(prompt, 4)
handle.close()
assert torch.equal(expected, got), (expected, got)
print("installed", moe_router.__file__)
EOF
