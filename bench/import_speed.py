#!/usr/bin/python3
"""How fast `moe-router trace import vllm` reads a vLLM routing dump, against
numpy.load of the same file in the same run.

    bench/import_speed.py --build build [--tokens 100000] [--repeats 5]

The dump is one request at the DeepSeek-V3 shape: (tokens, 58 layers, top-8)
of 256 experts, int32, as numpy.save writes it. Both readers see the file
from the page cache (numpy.load runs first, once untimed). Reported: medians
of the wall time, and the importer's own split between reading and checking
the array and writing the routing JSONL (which fsyncs, so the disk shows).
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--build", default="build", help="the CMake build directory")
    ap.add_argument("--tokens", type=int, default=100000)
    ap.add_argument("--layers", type=int, default=58)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--experts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", help="where to write the dump and the trace (default: a temp dir)")
    args = ap.parse_args()
    cli = os.path.join(args.build, "cli", "moe-router")
    work = args.dir or tempfile.mkdtemp(prefix="moe-import-")
    dump = os.path.join(work, "deepseek-v3.npy")
    out = os.path.join(work, "deepseek-v3.jsonl")

    rng = np.random.default_rng(0)
    ids = np.empty((args.tokens, args.layers, args.top_k), dtype="<i4")
    for start in range(0, args.tokens, 10000):  # distinct ids per row, in bounded memory
        n = min(10000, args.tokens - start)
        keys = rng.random((n, args.layers, args.experts), dtype=np.float32)
        ids[start:start + n] = np.argpartition(keys, args.top_k, axis=2)[:, :, :args.top_k]
    np.save(dump, ids)
    size = os.path.getsize(dump)
    print(f"dump: {dump}, {size / 1e6:.1f} MB, shape {ids.shape} int32")
    del ids

    np.load(dump)  # into the page cache
    loads, walls, reads, writes = [], [], [], []
    split = re.compile(r"read and checked in ([0-9.]+) s, written in ([0-9.]+) s")
    for _ in range(args.repeats):
        t = time.perf_counter()
        np.load(dump)
        loads.append(time.perf_counter() - t)
        t = time.perf_counter()
        r = subprocess.run([cli, "trace", "import", "vllm", dump, "-o", out,
                            "--num-experts", str(args.experts)],
                           capture_output=True, text=True, check=True)
        walls.append(time.perf_counter() - t)
        m = split.search(r.stderr)
        reads.append(float(m.group(1)))
        writes.append(float(m.group(2)))
    trace_mb = os.path.getsize(out) / 1e6
    load, wall, read, write = (statistics.median(x) for x in (loads, walls, reads, writes))
    print(f"medians of {args.repeats} runs, {args.tokens} tokens:")
    print(f"  numpy.load            {load:7.3f} s  {args.tokens / load:12,.0f} tokens/s")
    print(f"  import, read+check    {read:7.3f} s  {args.tokens / read:12,.0f} tokens/s"
          f"  ({read / load:.1f}x numpy.load)")
    print(f"  import, JSONL write   {write:7.3f} s  ({trace_mb:.0f} MB)")
    print(f"  import, whole command {wall:7.3f} s  {args.tokens / wall:12,.0f} tokens/s")


if __name__ == "__main__":
    main()
