"""moe-router for Python inference workers.

`moe_router.v1` holds the gRPC stubs generated from
proto/moe_router/v1/moe_router.proto (the build writes them beside this
file: cmake --build build --target moe_python); `WorkerCache` manages a
worker's own expert memory with moe-routerd. Runs with Debian's
python3-grpcio, python3-protobuf and python3-xxhash (fetched experts are
verified by their XXH3-64 checksums, as the C++ client does).
`InProcessWorker` (routing in this process, learning with moe-routerd) and
`LocalEngine` (the same engine on its own) are the native engine;
`moe_router.torch` offloads a PyTorch MoE model's experts with it.
"""

from moe_router.worker_cache import (ExpertDataLoss, WorkerCache, fetch_expert, routing_headers,
                                     verify_expert)

__all__ = ["ExpertDataLoss", "WorkerCache", "fetch_expert", "routing_headers", "verify_expert"]

try:
    from moe_router._engine import InProcessWorker, LocalEngine, Step
    __all__ += ["InProcessWorker", "LocalEngine", "Step"]
except ImportError:  # sanitizer builds leave the native module out
    pass
