"""Offloading a PyTorch MoE model's experts with moe-router.

    from moe_router.torch import offload_experts
    handle = offload_experts(model, budget_bytes=2 << 30)
    model.generate(...)          # experts paged through a 2 GiB device pool
    print(handle.stats())
    handle.close()               # the original blocks back

See moe_router.torch.blocks for the layouts it recognises, and
`python3 -m moe_router.torch.demo` for a run to watch.
"""

from moe_router.torch.blocks import UnsupportedModel, find_moe_blocks
from moe_router.torch.offload import Offload, offload_experts
from moe_router.torch.pool import ExpertLoadError

__all__ = ["ExpertLoadError", "Offload", "UnsupportedModel", "find_moe_blocks", "offload_experts"]
