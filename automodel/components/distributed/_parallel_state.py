"""The device mesh and the data-parallel facts the recipe needs (sampler rank/size, loss reduction)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from automodel.components.distributed.config import DistributedConfig
from automodel.components.distributed.init_utils import DistInfo

logger = logging.getLogger(__name__)

MESH_AXES = ("dp_replicate", "dp_shard", "cp", "tp")


@dataclass(frozen=True)
class ParallelState:
    """Where this rank sits in the `dp_replicate x dp_shard x cp x tp` mesh.

    - Data loading: every rank with the same `dp_rank` reads the same samples (its TP and CP peers), so the sampler
      uses `num_replicas=dp_size, rank=dp_rank`.
    - Loss reduction: `all_reduce_dp` sums over the data-parallel *and* context-parallel ranks (each holds different
      tokens), never over TP ranks (they hold the same loss).
    - Gradients: DDP / FSDP2 / Megatron-FSDP *average* gradients over `dp_cp_size` ranks, so a loss normalised by the
      global token count must be multiplied by `dp_cp_size` to give the global-batch gradient.
    """

    strategy: str
    mesh: DeviceMesh | None  # None for a single process
    flat: dict[str, DeviceMesh]  # flattened axes: dp, dp_shard_cp, dp_cp
    dp_replicate_size: int
    dp_shard_size: int
    cp_size: int
    tp_size: int
    dp_rank: int
    cp_rank: int
    tp_rank: int
    device: torch.device

    @property
    def dp_size(self) -> int:
        return self.dp_replicate_size * self.dp_shard_size

    @property
    def dp_cp_size(self) -> int:
        return self.dp_size * self.cp_size

    @property
    def world_size(self) -> int:
        return self.dp_cp_size * self.tp_size

    def submesh(self, axis: str) -> DeviceMesh | None:
        """A (possibly flattened) mesh axis: one of MESH_AXES or `dp`, `dp_shard_cp`, `dp_cp`; None when single."""
        if self.mesh is None:
            return None
        return self.flat[axis] if axis in self.flat else self.mesh[axis]

    @property
    def dp_group(self) -> dist.ProcessGroup | None:
        """The data-parallel process group (dp_replicate x dp_shard); None when dp_size is 1."""
        return None if self.mesh is None or self.dp_size == 1 else self.flat["dp"].get_group()

    def all_reduce_dp(self, tensor: torch.Tensor) -> torch.Tensor:
        """SUM `tensor` in place over the data- and context-parallel ranks (not TP: its ranks hold the same values)."""
        if self.mesh is not None and self.dp_cp_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.flat["dp_cp"].get_group())
        return tensor


def build_parallel_state(config: DistributedConfig, dist_info: DistInfo) -> ParallelState:
    """Validate `config` for this world and device, then build the device mesh (no mesh for a single process)."""
    dp_size = config.validate(dist_info.world_size, dist_info.device)
    dp_shard = dp_size // config.dp_replicate_size
    if dist_info.world_size == 1:
        logger.debug("Single process: no device mesh")
        return ParallelState(config.strategy, None, {}, 1, 1, 1, 1, 0, 0, 0, dist_info.device)
    sizes = (config.dp_replicate_size, dp_shard, config.cp_size, config.tp_size)
    mesh = init_device_mesh(dist_info.device.type, sizes, mesh_dim_names=MESH_AXES)
    # Flattened views: `dp` for data loading, `dp_shard_cp` for FSDP sharding (CP ranks hold the same parameters, so
    # they shard them too), `dp_cp` for summing losses and token counts.
    flat = {
        "dp": mesh["dp_replicate", "dp_shard"]._flatten("dp"),
        "dp_shard_cp": mesh["dp_shard", "cp"]._flatten("dp_shard_cp"),
        "dp_cp": mesh["dp_replicate", "dp_shard", "cp"]._flatten("dp_cp"),
    }
    state = ParallelState(
        strategy=config.strategy,
        mesh=mesh,
        flat=flat,
        dp_replicate_size=config.dp_replicate_size,
        dp_shard_size=dp_shard,
        cp_size=config.cp_size,
        tp_size=config.tp_size,
        dp_rank=flat["dp"].get_local_rank(),
        cp_rank=mesh["cp"].get_local_rank(),
        tp_rank=mesh["tp"].get_local_rank(),
        device=dist_info.device,
    )
    logger.info(
        "Device mesh dp_replicate(%d) x dp_shard(%d) x cp(%d) x tp(%d), strategy %s",
        *sizes,
        config.strategy,
    )
    return state
