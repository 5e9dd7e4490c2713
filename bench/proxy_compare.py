#!/usr/bin/python3
"""What HAProxy in front of moe-routerd costs and buys, on loopback.

Starts three moe-routerd replicas and HAProxy running
deploy/haproxy/haproxy.cfg (its bind and server lines swapped for
loopback ports, as tests/deploy/scale_out_test does), then runs
`moe-router loadgen` with a worker cache per loadgen worker (so calls
carry x-moe-cache and spread over the replicas), alternating run by run:

- latency: direct to one replica against through HAProxy, concurrency 1
  and 8 (p50 and p99 per call, and the proxy's added p50);
- throughput: one replica direct against three behind HAProxy, at
  concurrency 1, 8 and 24.

Prints medians over the repeats, as a table or JSON.

    bench/proxy_compare.py --build build [--duration 5] [--repeats 3] [--json]
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replica(build, name, port, metrics):
    argv = [os.path.join(build, "server", "moe-routerd"), f"--listen=127.0.0.1:{port}",
            f"--metrics_listen=127.0.0.1:{metrics}", "--health_listen=",
            f"--replica_name={name}"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "listening on port" in line:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return proc
    sys.exit(f"{name} did not start")


def haproxy_config(front, replicas):
    out = []
    with open(os.path.join(ROOT, "deploy", "haproxy", "haproxy.cfg")) as f:
        lines = f.read().splitlines()
    servers_done = False
    for line in lines:
        if line == "  bind :50051 proto h2":
            out.append(f"  bind 127.0.0.1:{front} proto h2")
        elif line.startswith("  server moe-router-"):
            if not servers_done:
                servers_done = True
                out += [f"  server r{i} 127.0.0.1:{p} port {m}" for i, (p, m) in enumerate(replicas)]
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ready(metrics):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def loadgen(build, address, concurrency, duration):
    argv = [os.path.join(build, "cli", "moe-router"), "loadgen", "--server", address,
            "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "1",
            "--cache-bytes", str(1 << 30), "--json"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"

    replicas = [(free_port(), free_port()) for _ in range(3)]
    procs = [start_replica(args.build, f"r{i}", p, m) for i, (p, m) in enumerate(replicas)]
    front = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(haproxy_config(front, replicas))
        proxy = subprocess.Popen([haproxy, "-db", "-f", cfg], stderr=subprocess.DEVNULL)
        procs.append(proxy)
        try:
            while not all(ready(m) for _, m in replicas):
                time.sleep(0.1)
            time.sleep(3)  # HAProxy's rise 2 at 1 s checks
            direct = f"127.0.0.1:{replicas[0][0]}"
            proxied = f"127.0.0.1:{front}"
            cases = [(c, where) for c in (1, 8, 24) for where in ("direct", "haproxy")]
            runs = {case: [] for case in cases}
            for _ in range(args.repeats):
                for case in cases:
                    concurrency, where = case
                    before = [cpu_seconds(p.pid) for p in procs]
                    result = loadgen(args.build, direct if where == "direct" else proxied,
                                     concurrency, args.duration)
                    # Warm-up calls are not counted; their CPU is (a small overstatement).
                    used = [cpu_seconds(p.pid) - b for p, b in zip(procs, before)]
                    result["replica_cpu_s"] = sum(used[:3])
                    result["haproxy_cpu_s"] = used[3]
                    runs[case].append(result)
                    print(f"  {case}: {result['calls_per_second']:.0f} calls/s, "
                          f"p50 {result['p50_us']:.0f} us", file=sys.stderr)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait()

    rows = []
    for case, results in runs.items():
        concurrency, where = case
        rows.append({
            "concurrency": concurrency, "where": where,
            "calls_per_second": statistics.median(r["calls_per_second"] for r in results),
            "p50_us": statistics.median(r["p50_us"] for r in results),
            "p99_us": statistics.median(r["p99_us"] for r in results),
            # CPU per call: what a core buys.
            "replica_cpu_us_per_call": statistics.median(
                r["replica_cpu_s"] / r["calls"] * 1e6 for r in results),
            "haproxy_cpu_us_per_call": statistics.median(
                r["haproxy_cpu_s"] / r["calls"] * 1e6 for r in results),
        })
    if args.json:
        print(json.dumps({"rows": rows, "repeats": args.repeats, "duration_s": args.duration}))
        return
    print(f"{'conc':>4} {'where':>22} {'calls/s':>9} {'p50 us':>8} {'p99 us':>8} "
          f"{'replica CPU us/call':>20} {'HAProxy CPU us/call':>20}")
    for r in rows:
        where = "1 replica direct" if r["where"] == "direct" else "3 replicas, HAProxy"
        print(f"{r['concurrency']:4} {where:>22} {r['calls_per_second']:9.0f} "
              f"{r['p50_us']:8.0f} {r['p99_us']:8.0f} {r['replica_cpu_us_per_call']:20.1f} "
              f"{r['haproxy_cpu_us_per_call']:20.1f}")
    for c in (1, 8, 24):
        d, h = (next(r for r in rows if r["concurrency"] == c and r["where"] == w)
                for w in ("direct", "haproxy"))
        print(f"concurrency {c}: HAProxy adds {h['p50_us'] - d['p50_us']:.0f} us at p50; "
              f"throughput {h['calls_per_second'] / d['calls_per_second']:.2f}x one replica")


if __name__ == "__main__":
    main()
