"""Experts read from a safetensors checkpoint instead of the model's own
tensors: the project's store (moe_router._engine.CheckpointStore, the C++
SafetensorsStore moe-routerd serves from) reads exact byte ranges and
verifies their XXH3 checksums on every load. The model's expert parameters
are never read, so they may be left unmaterialised (on the meta device).

The checkpoint is checked against the model when it opens: every expert of
every block must be there, with the model's tensor names (Transformers'
checkpoint names, e.g. model.layers.3.block_sparse_moe.experts.5.w1.weight),
shapes and dtype, and nothing else; what differs is refused by name.
"""

from typing import List, Tuple

import torch

from moe_router import _engine
from moe_router.torch.blocks import MoeBlock, UnsupportedModel
from moe_router.torch.pool import ExpertLoadError, Key

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16}


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


class CheckpointStore:
    """The host store of offload_experts(checkpoint=...): (layer, expert) as
    the engine numbers them, read from the checkpoint on each load."""

    def __init__(self, directory: str, blocks: List[MoeBlock]):
        for block in blocks:
            if block.checkpoint_names is None:
                raise UnsupportedModel(
                    f"{block.name}: fused expert tensors cannot be read from a checkpoint here "
                    f"(its per-expert tensors are fused by Transformers when loading)")
        pattern, self._layers = _expert_pattern(blocks)
        try:
            self._store = _engine.CheckpointStore(directory, pattern)
        except RuntimeError as error:
            raise UnsupportedModel(f"checkpoint {directory}: {error}") from error
        first = blocks[0].expert_tensors(0)
        self.shapes = [t.shape for t in first]
        self.dtype = first[0].dtype
        self._names = []  # per block, per expert: the full tensor names in compute order
        for block, layer in zip(blocks, self._layers):
            names = [[f"{block.name}.{n}" for n in block.checkpoint_names(e)]
                     for e in range(block.num_experts)]
            for e, expected in enumerate(names):
                self._check(directory, layer, e, expected, block.expert_tensors(e))
            self._names.append(names)

    def _check(self, directory, layer, expert, expected, model_tensors):
        try:
            found = {name: (dtype, tuple(shape))
                     for name, dtype, shape in self._store.tensors(layer, expert)}
        except RuntimeError as error:
            raise UnsupportedModel(f"checkpoint {directory}: {error}") from error
        for name, tensor in zip(expected, model_tensors):
            if name not in found:
                raise UnsupportedModel(f"checkpoint {directory} has no tensor '{name}'")
            dtype, shape = found.pop(name)
            if DTYPES.get(dtype) != tensor.dtype or shape != tuple(tensor.shape):
                raise UnsupportedModel(
                    f"checkpoint {directory}: tensor '{name}' is {dtype} {list(shape)}, the "
                    f"model's is {tensor.dtype} {list(tensor.shape)}")
        if found:
            raise UnsupportedModel(
                f"checkpoint {directory}: tensors the model does not compute with: "
                f"{sorted(found)}")

    def check(self, key: Key) -> None:
        layer, expert = key
        if not (0 <= layer < len(self._names) and 0 <= expert < len(self._names[layer])):
            raise ExpertLoadError(f"expert {key} is not in the checkpoint")

    def read(self, key: Key) -> List[torch.Tensor]:
        self.check(key)
        layer, expert = key
        try:
            loaded = {name: (dtype, shape, data) for name, dtype, shape, data in
                      self._store.load(self._layers[layer], expert)}
        except RuntimeError as error:
            raise ExpertLoadError(f"expert {key}: {error}") from error
        tensors = []
        for name in self._names[layer][expert]:
            dtype, shape, data = loaded[name]
            tensors.append(torch.frombuffer(data, dtype=DTYPES[dtype]).reshape(shape))
        return tensors
