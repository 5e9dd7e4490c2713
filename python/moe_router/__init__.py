"""moe-router for Python inference workers.

`moe_router.v1` holds the gRPC stubs generated from
proto/moe_router/v1/moe_router.proto (the build writes them beside this
file: cmake --build build --target moe_python); `WorkerCache` manages a
worker's own expert memory with moe-routerd. Runs with Debian's
python3-grpcio and python3-protobuf.
"""

from moe_router.worker_cache import WorkerCache, fetch_expert, routing_headers

__all__ = ["WorkerCache", "fetch_expert", "routing_headers"]
