#!/usr/bin/python3
"""moe-routerd against the null service, side by side, on loopback.

Starts moe-null-routerd and moe-routerd (the embedded default: half the
experts budgeted, so routing pages; and a fully budgeted model, so it does
not), runs `moe-router loadgen` against each at concurrency 1, 8 and 32 (unary)
and 1 (RouteStream), alternating servers run by run, and prints the medians,
the ratios to the null service, and moe-routerd's peak resident memory
against its cache budget.

    bench/loadgen_compare.py --build build [--duration 10] [--repeats 3]
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20


def start(argv):
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.search(r"listening on port (\d+)", line)
        if m:
            # Keep draining stderr so the server never blocks on it.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc, int(m.group(1))
    sys.exit(f"{argv[0]} did not start")


class RssSampler:
    """Samples a process's VmRSS every 50 ms; keeps the peak."""

    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, 0, False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            time.sleep(0.05)

    def finish(self):
        self.stop = True
        self.thread.join()
        with open(f"/proc/{self.pid}/status") as f:
            hwm = next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
        return self.peak, hwm


def loadgen(cli, port, concurrency, stream, duration, model="mixtral-8x7b"):
    argv = [cli, "loadgen", "--server", f"127.0.0.1:{port}", "--model", model,
            "--concurrency", str(concurrency), "--batch", "64",
            "--duration", str(duration), "--warmup", "1", "--json"]
    if stream:
        argv.append("--stream")
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default="build")
    ap.add_argument("--duration", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cli = os.path.join(args.build, "cli/moe-router")
    routerd = os.path.join(args.build, "server/moe-routerd")
    null = os.path.join(args.build, "bench/moe-null-routerd")
    common = ["--listen=127.0.0.1:0", "--health_listen=", "--metrics_listen="]

    config = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
    # The embedded default model, but with every expert budgeted.
    json.dump({"models": [{"name": "mixtral-8x7b", "numLayers": 32, "numExperts": 8, "topK": 2,
                           "budgetBytes": str(256 * MIB),
                           "synthetic": {"expertBytes": MIB}}]}, config)
    config.close()
    servers = {
        "null": start([null, "--listen=127.0.0.1:0"]),
        "default": start([routerd] + common),
        "resident": start([routerd] + common + [f"--config={config.name}"]),
    }
    budgets = {"default": 128 * MIB, "resident": 256 * MIB}
    samplers = {name: RssSampler(servers[name][0].pid) for name in budgets}
    rows = [(1, False), (8, False), (32, False), (1, True)]
    results = {}
    try:
        for concurrency, stream in rows:
            runs = {name: [] for name in servers}
            for _ in range(args.repeats):
                for name, (_, port) in servers.items():
                    runs[name].append(loadgen(cli, port, concurrency, stream, args.duration))
                    print(".", end="", file=sys.stderr, flush=True)
            results[(concurrency, stream)] = {
                name: {k: statistics.median(r[k] for r in rs)
                       for k in ("tokens_per_second", "p50_us", "p99_us", "p999_us")}
                for name, rs in runs.items()}
        print(file=sys.stderr)
    finally:
        memory = {name: s.finish() for name, s in samplers.items()}
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait()
        os.unlink(config.name)

    print(f"loadgen, 64 tokens x 8 experts per request, median of {args.repeats} runs of "
          f"{args.duration:g} s each; ratio = tokens/s against the null service\n")
    print("| call | concurrency | server | tokens/s | ratio | p50 us | p99 us | p99.9 us |")
    print("|---|---|---|---|---|---|---|---|")
    for (concurrency, stream), by_server in results.items():
        base = by_server["null"]["tokens_per_second"]
        for name, r in by_server.items():
            print(f"| {'RouteStream' if stream else 'RouteTokens'} | {concurrency} | {name} | "
                  f"{r['tokens_per_second']:,.0f} | {r['tokens_per_second'] / base:.2f} | "
                  f"{r['p50_us']:.0f} | {r['p99_us']:.0f} | {r['p999_us']:.0f} |")
    print("\nRouteStream / RouteTokens tokens/s at concurrency 1:")
    for name in servers:
        ratio = (results[(1, True)][name]["tokens_per_second"] /
                 results[(1, False)][name]["tokens_per_second"])
        print(f"  {name}: {ratio:.2f}x")
    print("\nmoe-routerd resident memory under load:")
    for name, (peak, hwm) in memory.items():
        print(f"  {name}: peak VmRSS {peak / MIB:.1f} MiB, VmHWM {hwm / MIB:.1f} MiB; budget "
              f"{budgets[name] / MIB:.0f} MiB + 64 MiB = {budgets[name] / MIB + 64:.0f} MiB "
              f"({'within' if hwm <= budgets[name] + 64 * MIB else 'OVER'})")


if __name__ == "__main__":
    main()
