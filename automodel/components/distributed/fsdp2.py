"""FSDP2 (`fully_shard`) over the data-parallel mesh, and `FSDP2Manager` for reference-system configs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from automodel.components.distributed.config import DistributedConfig

logger = logging.getLogger(__name__)


def apply_fsdp2(
    model: nn.Module,
    mesh: DeviceMesh,
    layers: Sequence[nn.Module],
    *,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype | None,
    reshard_after_forward: bool,
) -> None:
    """`fully_shard` each decoder layer, then the root (embeddings, final norm, lm_head); HSDP on a 2-D mesh."""
    mp_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    for i, layer in enumerate(layers):
        # The last layer's parameters are needed again as soon as backward starts: keeping them saves an all-gather.
        reshard = reshard_after_forward and i < len(layers) - 1
        fully_shard(layer, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    # The root (embeddings, final norm, lm_head) stays unsharded from forward to backward, which starts with it;
    # a fused linear cross-entropy also reads lm_head's unsharded weight right after the forward.
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
    # FSDP2 keeps the root (and here the last layer) unsharded after forward, since backward needs them at once.
    # After a forward without grad (an evaluation) nothing reshards them, and an optimizer built then would hold the
    # unsharded parameters, which are never updated (ENVIRONMENT.md). Resharding after every no-grad forward closes
    # that trap.
    model.register_forward_hook(_reshard_after_no_grad_forward)


def _reshard_after_no_grad_forward(module: nn.Module, args: object, output: object) -> None:
    if torch.is_grad_enabled():
        return
    for submodule in module.modules():
        if isinstance(submodule, FSDPModule):
            submodule.reshard()  # a no-op for modules already resharded


@dataclass
class FSDP2Manager(DistributedConfig):
    """`distributed: {_target_: ...fsdp2.FSDP2Manager, ...}` from reference-system configs: a `DistributedConfig`
    with strategy fsdp2. Its `backend` / `world_size` keys are accepted and ignored (the process group comes from
    `dist_env` and torchrun)."""

    strategy: Literal["fsdp2", "ddp", "megatron_fsdp"] = "fsdp2"
    backend: str | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("backend", "world_size"):
            if getattr(self, key) is not None:
                logger.warning("distributed.%s is ignored: the process group comes from dist_env and torchrun", key)
