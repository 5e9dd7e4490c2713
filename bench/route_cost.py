#!/usr/bin/env python3
"""Routing cost per token: BM_RouteToken of moe_core_bench (cache-aware, 64
tokens a batch, a half-resident cache), as time and as instructions.
Give several binaries (an old and a new build) to see them side by side in
one run: the binaries take turns, and each time is the median of --repeat
runs; instructions come from callgrind (deterministic, so one run each).

  bench/route_cost.py --binary old=/path/moe_core_bench --binary new=build/bench/moe_core_bench
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile

SHAPES = ["8/2", "64/6", "128/8", "256/8", "384/8"]
TOKENS_PER_CALL = 64  # bench/core_bench.cc: kBatchTokens


def timed(binary, benchmark, shape):
    out = subprocess.run([binary, f"--benchmark_filter=^{benchmark}/{shape}$",
                          "--benchmark_format=json"],
                         check=True, capture_output=True, text=True).stdout
    run = json.loads(out)["benchmarks"][0]
    return 1e9 / run["items_per_second"]


def instructions_per_token(binary, shape):
    """Instructions inside LayerRouter::Route per routed token."""
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=no",
                        "--toggle-collect=moe_router::LayerRouter::Route*",
                        f"--callgrind-out-file={out}", binary,
                        f"--benchmark_filter=^BM_RouteToken/{shape}$", "--benchmark_min_time=0.3"],
                       check=True, capture_output=True)
        tree = subprocess.run(["callgrind_annotate", "--tree=caller", out], check=True,
                              capture_output=True, text=True).stdout
    total = int(re.search(r"^\s*([\d,]+)\s+\(100\.0%\)\s+PROGRAM TOTALS", tree,
                          re.M).group(1).replace(",", ""))
    # The line naming Route's caller carries the number of calls.
    calls = int(re.search(r"<[^\n]*RouteTokens[^\n]*\(([\d,]+)x\)\s[^\n]*\n[^\n]*\*[^\n]*"
                          r"LayerRouter::Route\(", tree).group(1).replace(",", ""))
    return total / calls / TOKENS_PER_CALL


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="experts/top_k, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-callgrind", action="store_true")
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in args.binary]
    shapes = args.shapes.split(",")
    times = {(name, bench, shape): [] for name, _ in binaries
             for bench in ("BM_RouteToken", "BM_RouteTokenPlain") for shape in shapes}
    for _ in range(args.repeat):
        for shape in shapes:
            for bench in ("BM_RouteToken", "BM_RouteTokenPlain"):
                for name, path in binaries:
                    times[(name, bench, shape)].append(timed(path, bench, shape))
    header = "| experts / top-k |"
    for name, _ in binaries:
        header += f" {name} cache-aware ns | {name} plain ns |"
        if not args.no_callgrind:
            header += f" {name} instructions |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for shape in shapes:
        row = f"| {shape} |"
        for name, path in binaries:
            row += f" {statistics.median(times[(name, 'BM_RouteToken', shape)]):.1f} |"
            row += f" {statistics.median(times[(name, 'BM_RouteTokenPlain', shape)]):.1f} |"
            if not args.no_callgrind:
                row += f" {instructions_per_token(path, shape):,.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
