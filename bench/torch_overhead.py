"""What moe_router.torch adds to a layer whose experts are all resident: the
offloaded block's forward (gate, the model's own routing and the engine's,
bookkeeping, the experts from the pool) against an untouched copy of the
original block, on the same inputs, interleaved call by call, medians.

    PYTHONPATH=build-test/python /usr/bin/python3 bench/torch_overhead.py [--repeat 400]

Per Transformers layout and version (moe_router.torch.tiny.CASES: every
family reproduced in moe_router.torch.layouts), 8 experts, top-2 (Llama 4:
top-1), at two shapes: the tiny test block (hidden 64) where the
bookkeeping is nearly all there is, and a block a quarter of Mixtral's
width (hidden 1024, inner 3584), each at batch 1 and 16 tokens; prefetch
off, and by gate guess for 4.x Mixtral. `--layouts` and `--shapes` pick
some.
"""

import argparse
import copy
import statistics
import time

import torch

from moe_router.torch import offload_experts
from moe_router.torch import tiny

SHAPES = [("tiny 64x128", 64, 128), ("quarter-Mixtral 1024x3584", 1024, 3584)]
CASES = [(layout, version, None) for layout, version in tiny.CASES] + \
    [("mixtral", 4, "gate_guess")]


def median_us(samples):
    return statistics.median(samples) * 1e6


def first_block(model):
    return next(m for layer in model.layers for m in layer.children() if hasattr(m, "experts"))


def measure(layout, version, hidden, inner, batch, prefetch, repeat):
    torch.manual_seed(0)
    model = tiny.TinyMoeLM(layout, layers=3, experts=8, hidden=hidden, heads=4, inner=inner,
                           vocab=256, version=version, dense_layers=0).eval()
    original = first_block(copy.deepcopy(model))
    x = torch.randn(1, batch, hidden)
    handle = offload_experts(model, budget_bytes=1 << 40, prefetch=prefetch)
    offloaded = first_block(model)
    with torch.no_grad():
        for _ in range(3):  # loads what x needs; after this every call hits
            offloaded(x)
        before = handle.stats()["misses"]
        plain, wrapped = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            original(x)
            plain.append(time.perf_counter() - start)
            start = time.perf_counter()
            offloaded(x)
            wrapped.append(time.perf_counter() - start)
    stats = handle.stats()
    handle.close()
    assert stats["misses"] == before, "a measured call missed"
    return median_us(plain), median_us(wrapped)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=400)
    parser.add_argument("--layouts", nargs="*", help="only these layouts")
    parser.add_argument("--shapes", nargs="*", choices=[s[0].split()[0] for s in SHAPES],
                        help="only these shapes (tiny, quarter-Mixtral)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of "
          f"{args.repeat} calls")
    print(f"{'layout':16} {'block':28} {'batch':>5} {'prefetch':>10} {'original us':>12} "
          f"{'offloaded us':>13} {'added us':>9}")
    for layout, version, prefetch in CASES:
        if args.layouts and layout not in args.layouts:
            continue
        for name, hidden, inner in SHAPES:
            if args.shapes and name.split()[0] not in args.shapes:
                continue
            for batch in (1, 16):
                plain, wrapped = measure(layout, version, hidden, inner, batch, prefetch,
                                         args.repeat)
                print(f"{layout + ' v' + str(version):16} {name:28} {batch:5d} "
                      f"{str(prefetch):>10} {plain:12.1f} {wrapped:13.1f} {wrapped - plain:9.1f}")


if __name__ == "__main__":
    main()
