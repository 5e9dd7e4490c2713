#!/usr/bin/python3
"""Time to ready after kill -9 under load.

Starts moe-routerd (the embedded default, a state directory, snapshots every
second), loads it with `moe-router loadgen` with worker caches (routing and
paging), kills it with SIGKILL mid-load, restarts it on the same state
directory, and measures from the restart's exec to the first answered
RouteTokens, and whether the snapshot loaded. Repeats and prints each run
and the median.

    /usr/bin/python3 bench/kill_restart.py --build build [--repeats 5]
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--load_seconds", type=float, default=5)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(args.build, "python"))
    import grpc
    from moe_router.v1 import moe_router_pb2 as pb
    from moe_router.v1 import moe_router_pb2_grpc as pb_grpc

    routerd = os.path.join(args.build, "server", "moe-routerd")
    cli = os.path.join(args.build, "client", "moe-router")
    times = []
    with tempfile.TemporaryDirectory() as state:
        for run in range(args.repeats):
            port = free_port()
            cmd = [routerd, f"--listen=127.0.0.1:{port}", "--metrics_listen=", "--health_listen=",
                   f"--state_dir={state}", "--snapshot_interval=1s"]
            server = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            load = subprocess.Popen([cli, "loadgen", "--server", f"127.0.0.1:{port}",
                                     "--duration", str(args.load_seconds + 5), "--cache-bytes",
                                     str(32 << 20), "--concurrency", "4"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(args.load_seconds)
            server.send_signal(signal.SIGKILL)
            server.wait()
            load.kill()
            load.wait()
            state_file = os.path.join(state, "mixtral-8x7b.state.json")
            snapshot = open(state_file).read()

            start = time.monotonic()
            server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
            request = pb.RouteTokensRequest(model="mixtral-8x7b", layer=0,
                                            gate_logits=[0.0] * 8)
            while True:
                # A fresh channel per try: a failed one would wait out gRPC's
                # reconnect backoff (1 s and up), which is not the server's.
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    try:
                        pb_grpc.MoeRouterStub(channel).RouteTokens(request, timeout=1)
                        break
                    except grpc.RpcError:
                        pass
                time.sleep(0.005)
            ready = time.monotonic() - start
            server.send_signal(signal.SIGTERM)
            log = server.communicate(timeout=60)[1]
            loaded = "ignoring saved state" not in log
            times.append(ready)
            print(f"run {run}: ready {ready * 1000:.0f} ms after restart, "
                  f"snapshot of {len(snapshot)} bytes loaded: {loaded}")
    print(f"median time to ready after kill -9: {statistics.median(times) * 1000:.0f} ms "
          f"over {len(times)} runs (max {max(times) * 1000:.0f} ms)")


if __name__ == "__main__":
    main()
