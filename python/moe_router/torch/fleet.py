"""Registering an offloaded model with moe-routerd, so its workers learn
together over the Learn stream."""

from typing import Optional

import grpc

from moe_router.v1 import moe_router_pb2 as pb
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc


def register_model(server: str, name: str, num_layers: int, num_experts: int, top_k: int,
                   expert_bytes: int, bonus: Optional[float], prefetch_next_layer: int,
                   prefetch_threshold: float, timeout: float = 10.0) -> None:
    """Registers the model's shape at `server` (the same spec again is a
    no-op; another spec under the name is an error naming it). The service
    holds no expert bytes for it: the workers bring their own, so its store
    is synthetic and its budget one layer's top-k."""
    spec = pb.ModelSpec(name=name, num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                        budget_bytes=expert_bytes * top_k,
                        prefetch_next_layer=prefetch_next_layer)
    spec.synthetic.expert_bytes = expert_bytes
    spec.router.prefetch_threshold = prefetch_threshold
    if bonus is not None:
        spec.router.cache_bonus = float(bonus)
    with grpc.insecure_channel(server) as channel:
        try:
            pb_grpc.MoeRouterStub(channel).RegisterModel(pb.RegisterModelRequest(spec=spec),
                                                         timeout=timeout)
        except grpc.RpcError as error:
            raise RuntimeError(f"registering model '{name}' at {server}: {error.details()}") \
                from error
