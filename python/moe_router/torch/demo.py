"""A small MoE model generating on the CPU with its experts paged: all
experts resident, demand paging with LRU (no bonus, no prefetch), and
moe-router (cache bonus and gate-guess prefetch), at 25, 50 and 100% of the
experts.

    python3 -m moe_router.torch.demo [--layout mixtral|deepseek]
        [--train-steps 30] [--tokens 64]

`--layout mixtral` (the default): softmax top-2 of 8 experts per layer.
`--layout deepseek`: DeepSeek-V3's block, sigmoid scores with a per-expert
bias, the best 2 of 4 groups, top-4 of 16 experts scaled by 2.5, a shared
expert, the first layer dense. Both in Transformers 5's layout unless
--version 4.

The model first trains for --train-steps (30 by default, a fixed count so
that a run is repeatable; 0 keeps the seeded, untrained weights, whose
near-uniform gates say little about a real model) on the licence texts
Debian ships (/usr/share/common-licenses), which gives its routing some of
a trained model's locality; the demo prints how much (reuse between
consecutive tokens and the busiest expert's share, as `moe-router trace
stats` reports them). A DeepSeek-layout model's biases
are trained as DeepSeek-V3's are (its report, section 2.1.2: after each
step, each expert's bias moves by a fixed step towards an even load).
"""

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from moe_router.torch.blocks import find_moe_blocks
from moe_router.torch.offload import offload_experts
from moe_router.torch.tiny import TinyMoeLM, fused

LICENSES = "/usr/share/common-licenses"
# --layout: the tiny model's layout, experts and top-k.
LAYOUTS = {"mixtral": ("mixtral", 8, 2), "deepseek": ("deepseek_v3", 16, 4)}
# The bias step per training step (DeepSeek-V3 used 0.001 over trillions of
# tokens; a demo trains for tens of steps).
BIAS_STEP = 0.01


def corpus() -> bytes:
    texts = []
    for path in sorted(glob.glob(os.path.join(LICENSES, "*"))):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                texts.append(f.read())
    if not texts:
        sys.exit(f"demo: no text in {LICENSES} to train on")
    return b"\n".join(texts)


class LoadBalancingBias:
    """DeepSeek-V3's auxiliary-loss-free balancing: counts each block's
    choices during a step (the model's own rule on its own gate), then moves
    each expert's choice bias by BIAS_STEP towards the mean load."""

    def __init__(self, model):
        self.blocks = [b for b in find_moe_blocks(model) if b.routing.choice_bias is not None]
        self.loads = [torch.zeros(b.num_experts) for b in self.blocks]
        self.handles = [b.module.register_forward_pre_hook(self._counter(i))
                        for i, b in enumerate(self.blocks)]

    def _counter(self, i):
        block = self.blocks[i]

        def count(module, args):
            with torch.no_grad():
                x = args[0].reshape(-1, args[0].shape[-1])
                chosen = block.routing.own_choice(block.routing.scores(block.gate_logits(x)))
                self.loads[i] += torch.bincount(chosen.reshape(-1), minlength=block.num_experts)
        return count

    def step(self):
        with torch.no_grad():
            for block, load in zip(self.blocks, self.loads):
                block.routing.bias += BIAS_STEP * torch.sign(load.mean() - load)
                load.zero_()

    def close(self):
        for handle in self.handles:
            handle.remove()


def train(model, steps, seed, progress):
    data = torch.tensor(list(corpus()), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    balancing = LoadBalancingBias(model)
    model.train()
    start, loss = time.time(), float("nan")
    for step in range(1, steps + 1):
        starts = torch.randint(0, len(data) - 65, (16,), generator=generator)
        batch = torch.stack([data[s:s + 65] for s in starts])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        balancing.step()
        if progress:
            print(f"\rtraining: step {step}/{steps}, {time.time() - start:5.1f} s, "
                  f"loss {loss.item():.3f}", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    balancing.close()
    return model.eval(), time.time() - start, float(loss)


def routing_locality(path):
    """Reuse between consecutive tokens (the share of a token's experts the
    previous token used too, per layer) and the busiest expert's share of a
    layer's accesses, averaged over layers."""
    by_layer = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            by_layer.setdefault(record["layer"], []).append(record["experts"])
    reuse, busiest = [], []
    for layer in sorted(by_layer):
        rows = by_layer[layer]
        shared = [len(set(a) & set(b)) / len(b) for a, b in zip(rows, rows[1:])]
        reuse.append(np.mean(shared) if shared else 0.0)
        counts = np.bincount(np.concatenate(rows)) if rows else np.zeros(1)
        busiest.append(counts.max() / max(counts.sum(), 1))
    return float(np.mean(reuse)), float(np.mean(busiest))


def run(model, prompt, tokens, handle_args):
    handle = offload_experts(model, **handle_args) if handle_args else None
    start = time.perf_counter()
    generated, steps = model.generate(prompt, tokens)
    seconds = time.perf_counter() - start
    stats = handle.stats() if handle else None
    if handle:
        handle.close()
    return generated, torch.stack(steps), seconds, stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=sorted(LAYOUTS), default="mixtral")
    parser.add_argument("--version", type=int, choices=(4, 5), default=5,
                        help="the Transformers major version whose modules the model uses")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, help="per layer (8 mixtral, 16 deepseek)")
    parser.add_argument("--top-k", type=int, help="(2 mixtral, 4 deepseek)")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--inner", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--train-steps", type=int, default=30,
                        help="train first (0: seeded, untrained weights)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    layout, experts, top_k = LAYOUTS[args.layout]
    args.experts, args.top_k = args.experts or experts, args.top_k or top_k
    progress = sys.stderr.isatty()
    torch.manual_seed(args.seed)
    # Built (and trained) in 4.x's per-expert layout, then fused for 5.x as
    # Transformers 5 loads a checkpoint.
    model = TinyMoeLM(layout, layers=args.layers, experts=args.experts, top_k=args.top_k,
                      hidden=args.hidden, heads=4, inner=args.inner, version=4).eval()
    prompt = torch.tensor([list(b"Permission is hereby granted, free of charge, ")])
    with tempfile.TemporaryDirectory() as work:
        def locality(tag):
            path = os.path.join(work, f"{tag}.jsonl")
            run(model, prompt, args.tokens, dict(budget_bytes=1 << 40, bonus=0, prefetch=None,
                                                 record=path))
            return routing_locality(path)

        if args.train_steps > 0:
            before = locality("untrained")
            model, seconds, loss = train(model, args.train_steps, args.seed, progress)
            after = locality("trained")
            print(f"trained {args.train_steps} steps ({seconds:.0f} s, final loss {loss:.3f}) on "
                  f"{LICENSES}")
            print(f"routing locality, untrained -> trained: reuse between consecutive tokens "
                  f"{before[0]:.3f} -> {after[0]:.3f}, busiest expert's share "
                  f"{before[1]:.3f} -> {after[1]:.3f} (uniform: {1 / args.experts:.3f})")
        else:
            reuse, busiest = locality("seeded")
            print(f"seeded weights, untrained: reuse between consecutive tokens {reuse:.3f}, "
                  f"busiest expert's share {busiest:.3f} (uniform: {1 / args.experts:.3f})")
    if args.version == 5:
        model = fused(model)
    base_tokens, base_logits, base_seconds, _ = run(model, prompt, args.tokens, None)
    blocks = find_moe_blocks(model)
    total = len(blocks) * args.experts
    expert_bytes = sum(t.numel() * t.element_size() for t in blocks[0].expert_tensors(0))
    dense = args.layers - len(blocks)
    print(f"{args.layout} layout (Transformers {args.version}, {blocks[0].family}): "
          f"{len(blocks)} MoE layers{f' after {dense} dense' if dense else ''} x "
          f"{args.experts} experts, top-{args.top_k}, {expert_bytes / 2**20:.2f} MiB per expert; "
          f"{args.tokens} tokens generated after a {prompt.shape[1]}-token prompt, greedy, CPU")
    header = (f"{'budget':>7} {'mode':<14} {'tokens/s':>9} {'vs all':>7} {'hit':>6} "
              f"{'ready':>6} {'MiB/token':>10} {'wait ms/tok':>11} {'same tokens':>11} "
              f"{'max logit diff':>14} {'guess acc':>9}")
    print(header)
    print(f"{'-':>7} {'all resident':<14} {args.tokens / base_seconds:9.1f} {1:7.2f} "
          f"{1:6.3f} {1:6.3f} {0:10.2f} {0:11.2f} {1:11.3f} {0:14.2e} {'-':>9}")
    modes = [("lru paging", dict(bonus=0, prefetch=None, eviction_policy="lru")),
             ("moe-router", dict(prefetch="gate_guess"))]
    for share in (25, 50, 100):
        budget = total * share // 100 * expert_bytes
        for name, options in modes:
            tokens, logits, seconds, stats = run(model, prompt, args.tokens,
                                                 dict(budget_bytes=budget, **options))
            new = tokens[0, prompt.shape[1]:]
            same = float((new == base_tokens[0, prompt.shape[1]:]).float().mean())
            agree = int((new != base_tokens[0, prompt.shape[1]:]).nonzero()[0]) \
                if same < 1 else args.tokens
            diff = float((logits[:agree] - base_logits[:agree]).abs().max()) if agree else 0.0
            guess = stats["gate_guess_accuracy"]
            print(f"{share:>6}% {name:<14} {args.tokens / seconds:9.1f} "
                  f"{base_seconds / seconds:7.2f} {stats['hit_rate']:6.3f} "
                  f"{stats['ready_rate']:6.3f} "
                  f"{stats['bytes_moved'] / stats['tokens'] / 2**20:10.2f} "
                  f"{stats['load_wait_s'] * 1e3 / stats['tokens']:11.2f} {same:11.3f} "
                  f"{diff:14.2e} {'-' if guess is None else f'{guess:.3f}':>9}")
    print("hit and ready: of the distinct experts each layer call needs; max logit diff: over "
          "the steps before the first different token; guess acc: the share of a layer's "
          "experts its gate guess (the layer's gate on the previous layer's input) named")


if __name__ == "__main__":
    main()
