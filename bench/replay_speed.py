#!/usr/bin/env python3
"""Replay speed: accesses per second of `moe-router replay` per policy, one
budget a run, on one thread (replay always adds lru, lfu and belady; each
policy's accesses count), on calibrated traces of 8 to 384 experts.
Give several binaries (an old and a new build) to see them side by side in
one run; each figure is the median of --repeat runs.

  bench/replay_speed.py --binary old=/path/moe-router --binary new=build/cli/moe-router
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

# name: (tracegen preset or None, extra tracegen flags, tokens per sequence)
WORKLOADS = {
    "8": ("mixtral", [], 512),
    "60": ("qwen3-30b-a3b", ["--layers", "24", "--experts", "60", "--top-k", "4"], 256),
    "128": ("qwen3-30b-a3b", [], 128),
    "256": ("deepseek-v3", [], 96),
    "384": ("kimi-k2", [], 64),
}
POLICIES = ["lru", "lfu", "affinity", "adaptive", "layer_reuse", "belady"]
BUDGETS = [10, 25, 50, 75]


def generate(binary, directory, experts):
    preset, extra, tokens = WORKLOADS[experts]
    path = os.path.join(directory, f"e{experts}.jsonl")
    if not os.path.exists(path):
        subprocess.run([binary, "tracegen", "--preset", preset, "--out", path, "--sequences", "2",
                        "--tokens", str(tokens), "--seed", "1", *extra],
                       check=True, capture_output=True)
    return path


def one_thread_flags(binary):
    usage = subprocess.run([binary, "replay", "--help"], capture_output=True, text=True).stdout
    return ["--threads", "1"] if "--threads" in usage else []


def timed_replay(binary, trace, slots, policy):
    start = time.perf_counter()
    out = subprocess.run([binary, "replay", trace, "--global-slots", str(slots), "--policy", policy,
                          "--json", *one_thread_flags(binary)],
                         check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    rows = json.loads(out.stdout)["rows"]
    mine = [r for r in rows if r["policy"] == policy][0]
    return seconds, sum(r["accesses"] for r in rows), mine["hit_rate"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", action="append", required=True, help="NAME=PATH")
    parser.add_argument("--experts", default=",".join(WORKLOADS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    binaries = [b.split("=", 1) for b in args.binary]
    with tempfile.TemporaryDirectory() as directory:
        print(f"{'experts':>7} {'policy':>11} {'budget':>6} " +
              " ".join(f"{name + ' acc/s':>14}" for name, _ in binaries) + "  hit rate")
        for experts in args.experts.split(","):
            trace = generate(binaries[-1][1], directory, experts)
            with open(trace, "rb") as f:  # a JSON header line, then binary logits
                header = json.loads(f.readline())
            slots_total = header["num_layers"] * header["num_experts"]
            for policy in args.policies.split(","):
                for budget in map(int, args.budgets.split(",")):
                    slots = max(slots_total * budget // 100, header["top_k"])
                    rates, hits = [], set()
                    for _, binary in binaries:
                        runs = [timed_replay(binary, trace, slots, policy)
                                for _ in range(args.repeat)]
                        seconds = statistics.median(r[0] for r in runs)
                        rates.append(runs[0][1] / seconds)
                        hits.add(round(runs[0][2], 12))
                    same = "" if len(hits) == 1 else "  DIFFERENT"
                    print(f"{experts:>7} {policy:>11} {budget:>5}% " +
                          " ".join(f"{r:>14,.0f}" for r in rates) +
                          f"  {sorted(hits)[0]:.4f}{same}", flush=True)


if __name__ == "__main__":
    main()
