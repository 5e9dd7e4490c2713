"""Experts read from elsewhere than the model's own tensors, so that those
are never read (they may stay unmaterialised, on the meta device):

- CheckpointStore: a safetensors checkpoint through the project's store
  (moe_router._engine.CheckpointStore, the C++ SafetensorsStore moe-routerd
  serves from): exact byte ranges, XXH3 checksums verified on every load;
- ServerStore: moe-routerd's FetchExpert for a model an operator
  registered there on the model's checkpoint, verified as the Python
  client verifies every fetch (per-tensor and expert checksums).

Both name an expert's tensors as Transformers' checkpoints do (e.g.
model.layers.3.block_sparse_moe.experts.5.w1.weight) and check them
against the model: every tensor the model computes with, of its shape and
dtype, and nothing else; what differs is refused by name.
"""

from typing import Dict, List, Tuple

import grpc
import torch

from moe_router import _engine
from moe_router.torch.blocks import MoeBlock, UnsupportedModel
from moe_router.torch.fleet import registered_spec, shape_mismatch
from moe_router.torch.pool import ExpertLoadError, Key
from moe_router.v1 import moe_router_pb2_grpc as pb_grpc
from moe_router.worker_cache import ExpertDataLoss, fetch_described_expert

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16}

# name -> (dtype name, shape): what a store says an expert's tensors are.
Described = Dict[str, Tuple[str, Tuple[int, ...]]]


def _expert_pattern(blocks: List[MoeBlock]) -> Tuple[str, List[int]]:
    """The store's expert pattern for these blocks' names, and each block's
    layer number in it: the one numeric part of the name that varies."""
    parts = [b.name.split(".") for b in blocks]
    for i, part in enumerate(parts[0]):
        others = {tuple(p[:i] + p[i + 1:]) for p in parts}
        if part.isdigit() and len(others) == 1 and \
                all(len(p) == len(parts[0]) and p[i].isdigit() for p in parts):
            pattern = ".".join(parts[0][:i] + ["{layer}"] + parts[0][i + 1:])
            return pattern + ".experts.{expert}.", [int(p[i]) for p in parts]
    raise UnsupportedModel(
        f"blocks {[b.name for b in blocks]}: their names do not differ in exactly a layer "
        f"number, so the checkpoint's tensors cannot be named for them")


class ExpertNames:
    """The checkpoint names of every block's experts' tensors, in the order
    the blocks compute with them, and each block's layer number there."""

    def __init__(self, blocks: List[MoeBlock]):
        for block in blocks:
            if block.checkpoint_names is None:
                raise UnsupportedModel(
                    f"{block.name}: fused expert tensors cannot be read from a checkpoint or a "
                    f"server here (its per-expert tensors are fused by Transformers when loading)")
        self.pattern, self.layers = _expert_pattern(blocks)
        self._blocks = blocks
        first = blocks[0].expert_tensors(0)
        self.shapes = [t.shape for t in first]
        self.dtype = first[0].dtype

    def names(self, key: Key) -> List[str]:
        block = self._blocks[key[0]]
        return [f"{block.name}.{n}" for n in block.checkpoint_names(key[1])]

    def check(self, key: Key, where: str) -> None:
        """ExpertLoadError unless the model has expert `key`."""
        layer, expert = key
        if not (0 <= layer < len(self._blocks) and 0 <= expert < self._blocks[layer].num_experts):
            raise ExpertLoadError(f"expert {key} is not in {where}")

    def mismatch(self, key: Key, described: Described):
        """What differs between the store's tensors of `key` and the model's,
        or None."""
        found = dict(described)
        model = self._blocks[key[0]].expert_tensors(key[1])
        for name, tensor in zip(self.names(key), model):
            if name not in found:
                return f"no tensor '{name}'"
            dtype, shape = found.pop(name)
            if DTYPES.get(dtype) != tensor.dtype or tuple(shape) != tuple(tensor.shape):
                return (f"tensor '{name}' is {dtype} {list(shape)}, the model's is "
                        f"{tensor.dtype} {list(tensor.shape)}")
        if found:
            return f"tensors the model does not compute with: {sorted(found)}"
        return None

    def tensors(self, key: Key, data: Dict[str, Tuple[str, Tuple[int, ...], object]]):
        """The expert's tensors in compute order from name -> (dtype, shape,
        a buffer of its bytes), without copying."""
        return [torch.frombuffer(data[name][2], dtype=DTYPES[data[name][0]]).reshape(data[name][1])
                for name in self.names(key)]


class CheckpointStore:
    """offload_experts(checkpoint=DIR): (layer, expert) as the engine numbers
    them, read from the checkpoint on each load. Every expert is checked
    against the model when it opens (the store describes them without
    reading)."""

    def __init__(self, directory: str, blocks: List[MoeBlock]):
        self._names = ExpertNames(blocks)
        self.shapes, self.dtype = self._names.shapes, self._names.dtype
        try:
            self._store = _engine.CheckpointStore(directory, self._names.pattern)
            for layer, block in enumerate(blocks):
                for expert in range(block.num_experts):
                    described = {name: (dtype, tuple(shape)) for name, dtype, shape in
                                 self._store.tensors(self._names.layers[layer], expert)}
                    wrong = self._names.mismatch((layer, expert), described)
                    if wrong:
                        raise UnsupportedModel(f"checkpoint {directory}: {wrong}")
        except RuntimeError as error:
            raise UnsupportedModel(f"checkpoint {directory}: {error}") from error

    def check(self, key: Key) -> None:
        self._names.check(key, "the checkpoint")

    def read(self, key: Key) -> List[torch.Tensor]:
        self.check(key)
        try:
            loaded = self._store.load(self._names.layers[key[0]], key[1])
        except RuntimeError as error:
            raise ExpertLoadError(f"expert {key}: {error}") from error
        return self._names.tensors(key, {name: (dtype, shape, data)
                                         for name, dtype, shape, data in loaded})


class ServerStore:
    """offload_experts(expert_server=ADDRESS): (layer, expert) fetched from
    moe-routerd's FetchExpert on each load, for the model `model` an
    operator registered there on this model's checkpoint. The model's shape
    and its first expert are checked when it opens; an expert that turns out
    different, or arrives altered, fails its load naming what."""

    def __init__(self, address: str, model: str, blocks: List[MoeBlock], cache: str,
                 timeout: float = 60.0):
        self._names = ExpertNames(blocks)
        self.shapes, self.dtype = self._names.shapes, self._names.dtype
        self._where = f"model '{model}' at {address}"
        self._model, self._cache, self._timeout = model, cache, timeout
        self._channel = grpc.insecure_channel(address)
        self._stub = pb_grpc.MoeRouterStub(self._channel)
        try:
            spec = registered_spec(self._stub, model, timeout)
        except grpc.RpcError as error:
            raise UnsupportedModel(f"{self._where}: {error.details()}") from error
        if spec is None:
            raise UnsupportedModel(
                f"{self._where} is not registered: FetchExpert serves a model registered there "
                f"on its checkpoint")
        wrong = shape_mismatch(spec, (len(blocks), blocks[0].num_experts, blocks[0].top_k))
        if wrong:
            raise UnsupportedModel(f"{self._where} {wrong}")
        try:
            self.read((0, 0))
        except ExpertLoadError as error:
            raise UnsupportedModel(str(error)) from error

    def check(self, key: Key) -> None:
        self._names.check(key, self._where)

    def read(self, key: Key) -> List[torch.Tensor]:
        self.check(key)
        try:
            header, data = fetch_described_expert(
                self._stub, self._model, self._names.layers[key[0]], key[1],
                timeout=self._timeout, cache=self._cache)
        except (ExpertDataLoss, grpc.RpcError) as error:
            details = error.details() if isinstance(error, grpc.RpcError) else str(error)
            raise ExpertLoadError(f"expert {key} from {self._where}: {details}") from error
        described, parts, offset = {}, {}, 0
        view = memoryview(data)
        for t in header.tensors:
            described[t.name] = (t.dtype, tuple(t.shape))
            parts[t.name] = (t.dtype, tuple(t.shape), view[offset:offset + t.size_bytes])
            offset += t.size_bytes
        wrong = self._names.mismatch(key, described)
        if wrong:
            raise ExpertLoadError(f"expert {key} from {self._where}: {wrong}")
        return self._names.tensors(key, parts)

    def close(self) -> None:
        self._channel.close()
