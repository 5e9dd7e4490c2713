"""Registering an offloaded model with moe-routerd, so its workers learn
together over the Learn stream."""

from typing import Optional, Tuple

import grpc
import numpy as np

from moe_router.v1 import moe_router_pb2 as pb
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc


def model_spec(name: str, num_layers: int, num_experts: int, top_k: int, expert_bytes: int,
               bonus: Optional[float], prefetch_next_layer: int, prefetch_threshold: float,
               routing: Optional[dict] = None,
               choice_bias: Optional[np.ndarray] = None) -> pb.ModelSpec:
    """The spec an offloaded model registers with: the service holds no
    expert bytes for it (the workers bring their own), so its store is
    synthetic and its budget one layer's top-k. routing: the model's rule,
    RoutingSettings' fields by name; choice_bias: (layers, experts)."""
    spec = pb.ModelSpec(name=name, num_layers=num_layers, num_experts=num_experts, top_k=top_k,
                        budget_bytes=expert_bytes * top_k,
                        prefetch_next_layer=prefetch_next_layer)
    spec.synthetic.expert_bytes = expert_bytes
    spec.router.prefetch_threshold = prefetch_threshold
    if bonus is not None:
        spec.router.cache_bonus = float(bonus)
    for key, value in (routing or {}).items():
        setattr(spec.routing, key, value)
    if choice_bias is not None:
        spec.routing.choice_bias = True
        spec.routing.bias.extend(np.asarray(choice_bias, dtype=np.float32).ravel().tolist())
    return spec


def registered_spec(stub, name: str, timeout: float) -> Optional[pb.ModelSpec]:
    """The spec of the model `name` registered at the stub's server, or None."""
    listed = stub.ListModels(pb.ListModelsRequest(), timeout=timeout)
    return next((m.spec for m in listed.models if m.spec.name == name), None)


def shape_mismatch(spec: pb.ModelSpec, shape: Tuple[int, int, int]) -> Optional[str]:
    """How a registered model's (layers, experts, top_k) differs from
    `shape`, or None."""
    theirs = (spec.num_layers, spec.num_experts, spec.top_k)
    if theirs == tuple(shape):
        return None
    return f"has (layers, experts, top_k) {theirs}; this model's are {tuple(shape)}"


def register_model(server: str, spec: pb.ModelSpec, timeout: float = 10.0) -> None:
    """Registers `spec` at `server`, unless a model of that name is there
    already: then the operator's model is used as it is (its router and
    learning settings), provided its shape is the spec's; another shape is
    an error naming both."""
    with grpc.insecure_channel(server) as channel:
        stub = pb_grpc.MoeRouterStub(channel)
        try:
            existing = registered_spec(stub, spec.name, timeout)
            if existing is None:
                stub.RegisterModel(pb.RegisterModelRequest(spec=spec), timeout=timeout)
                return
        except grpc.RpcError as error:
            raise RuntimeError(f"registering model '{spec.name}' at {server}: "
                               f"{error.details()}") from error
    wrong = shape_mismatch(existing, (spec.num_layers, spec.num_experts, spec.top_k))
    if wrong:
        raise RuntimeError(f"model '{spec.name}' at {server} {wrong}")
