"""Megatron-FSDP (NVIDIA's `megatron-fsdp` package, the reference system's "nvFSDP"): an optional CUDA backend.

Written against megatron-fsdp 0.6 (`fully_shard_model`, `fully_shard_optimizer`) but not run here: our machines have
no GPU. `DistributedConfig.validate` refuses it on CPU and without the package, before anything is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from automodel.components.distributed.config import DistributedConfig, DistributedError

logger = logging.getLogger(__name__)

_INSTALL = "pip install 'automodel[megatron]'"


def _import_megatron_fsdp() -> Any:
    try:
        import megatron_fsdp
    except ImportError as error:
        raise DistributedError(
            f"distributed.strategy: megatron_fsdp needs the megatron-fsdp package: {_INSTALL}"
        ) from error
    return megatron_fsdp


def apply_megatron_fsdp(
    model: nn.Module,
    state: Any,
    layers: Sequence[nn.Module],
    *,
    param_dtype: torch.dtype | None,
    reduce_dtype: torch.dtype | None,
) -> nn.Module:
    """Wrap `model` in Megatron-FSDP (ZeRO-3 over `dp_shard_cp`, replicated over `dp_replicate`); returns the wrapper.

    The optimizer must then go through `shard_optimizer`.
    """
    megatron_fsdp = _import_megatron_fsdp()
    hsdp = state.dp_replicate_size > 1
    mixed_precision = megatron_fsdp.MixedPrecisionPolicy(
        main_params_dtype=torch.float32,  # fp32 master weights in the optimizer, whatever the compute dtype
        main_grads_dtype=reduce_dtype,
        grad_comm_dtype=reduce_dtype,
    )
    if param_dtype is not None:
        model.to(param_dtype)  # Megatron-FSDP computes in the model's own dtype
    # Units are the decoder layer classes: their parameters can be freed between forward and backward.
    unit_classes = sorted({type(layer) for layer in layers}, key=lambda cls: cls.__name__)
    wrapped = megatron_fsdp.fully_shard_model(
        module=model,
        device_mesh=state.mesh,
        dp_shard_dim="dp_shard_cp",
        dp_outer_dim="dp_replicate" if hsdp else None,
        tp_dim="tp",
        hybrid_fsdp_group=state.submesh("dp_cp").get_group() if hsdp else None,
        fsdp_unit_modules=unit_classes,
        zero_dp_strategy=3,
        device=state.device,
        mixed_precision_policy=mixed_precision,
    )
    logger.info("Megatron-FSDP over %d data-parallel ranks (units: %s)", state.dp_cp_size, unit_classes)
    return wrapped


def shard_optimizer(optimizer: torch.optim.Optimizer, config: DistributedConfig) -> torch.optim.Optimizer:
    """Hand the optimizer to Megatron-FSDP when that is the strategy (it must see the sharded parameters);
    any other strategy returns `optimizer` unchanged."""
    if config.strategy != "megatron_fsdp" or not torch.distributed.is_initialized():
        return optimizer
    return _import_megatron_fsdp().fully_shard_optimizer(optimizer)


@dataclass
class MegatronFSDPManager(DistributedConfig):
    """`distributed: {_target_: ...megatron_fsdp.MegatronFSDPManager, ...}`: a `DistributedConfig` with strategy
    megatron_fsdp (`backend` / `world_size` are accepted and ignored)."""

    strategy: Literal["fsdp2", "ddp", "megatron_fsdp"] = "megatron_fsdp"
    backend: str | None = None
    world_size: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("backend", "world_size"):
            if getattr(self, key) is not None:
                logger.warning("distributed.%s is ignored: the process group comes from dist_env and torchrun", key)
