"""A small Mixtral-layout model generating on the CPU with its experts paged:
all experts resident, demand paging with LRU (no bonus, no prefetch), and
moe-router (cache bonus and gate-guess prefetch), at 25, 50 and 100% of the
experts.

    python3 -m moe_router.torch.demo [--train-seconds 60] [--tokens 64]

The weights are seeded, not trained, unless --train-seconds trains the model
first on the licence texts Debian ships (/usr/share/common-licenses), which
gives its routing some of a trained model's locality; the demo prints how
much (reuse between consecutive tokens and the busiest expert's share, as
`moe-router trace stats` reports them).
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

from moe_router.torch.offload import offload_experts
from moe_router.torch.tiny import TinyMoeLM

LICENSES = "/usr/share/common-licenses"


def corpus() -> bytes:
    texts = []
    for path in sorted(glob.glob(os.path.join(LICENSES, "*"))):
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                texts.append(f.read())
    if not texts:
        sys.exit(f"demo: no text in {LICENSES} to train on")
    return b"\n".join(texts)


def train(model, seconds, seed, progress):
    data = torch.tensor(list(corpus()), dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    start, steps, loss = time.time(), 0, float("nan")
    while time.time() - start < seconds:
        starts = torch.randint(0, len(data) - 65, (16,), generator=generator)
        batch = torch.stack([data[s:s + 65] for s in starts])
        logits, _ = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if progress:
            print(f"\rtraining: {time.time() - start:5.1f} s, {steps} steps, loss {loss.item():.3f}",
                  end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return model.eval(), steps, float(loss)


def routing_locality(path, layers):
    """Reuse between consecutive tokens (the share of a token's experts the
    previous token used too, per layer) and the busiest expert's share of a
    layer's accesses, averaged over layers."""
    by_layer = {}
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            by_layer.setdefault(record["layer"], []).append(record["experts"])
    reuse, busiest = [], []
    for layer in range(layers):
        rows = by_layer.get(layer, [])
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
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--inner", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=64, help="tokens to generate")
    parser.add_argument("--train-seconds", type=float, default=0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    progress = sys.stderr.isatty()
    torch.manual_seed(args.seed)
    model = TinyMoeLM("mixtral", layers=args.layers, experts=args.experts, top_k=args.top_k,
                      hidden=args.hidden, heads=4, inner=args.inner).eval()
    prompt = torch.tensor([list(b"Permission is hereby granted, free of charge, ")])
    with tempfile.TemporaryDirectory() as work:
        def locality(tag):
            path = os.path.join(work, f"{tag}.jsonl")
            run(model, prompt, args.tokens, dict(budget_bytes=1 << 40, bonus=0, prefetch=None,
                                                 record=path))
            return routing_locality(path, args.layers)

        if args.train_seconds > 0:
            before = locality("untrained")
            model, steps, loss = train(model, args.train_seconds, args.seed, progress)
            after = locality("trained")
            print(f"trained {args.train_seconds:g} s ({steps} steps, final loss {loss:.3f}) on "
                  f"{LICENSES}")
            print(f"routing locality, untrained -> trained: reuse between consecutive tokens "
                  f"{before[0]:.3f} -> {after[0]:.3f}, busiest expert's share "
                  f"{before[1]:.3f} -> {after[1]:.3f} (uniform: {1 / args.experts:.3f})")
        else:
            reuse, busiest = locality("seeded")
            print(f"seeded weights, untrained: reuse between consecutive tokens {reuse:.3f}, "
                  f"busiest expert's share {busiest:.3f} (uniform: {1 / args.experts:.3f})")
    base_tokens, base_logits, base_seconds, _ = run(model, prompt, args.tokens, None)
    total = args.layers * args.experts
    expert_bytes = 3 * args.hidden * args.inner * 4
    print(f"{args.layers} layers x {args.experts} experts, top-{args.top_k}, "
          f"{expert_bytes / 2**20:.2f} MiB per expert; {args.tokens} tokens generated "
          f"after a {prompt.shape[1]}-token prompt, greedy, CPU")
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
