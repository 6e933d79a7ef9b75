"""Process-group setup and model parallelisation (DDP; activation checkpointing; torch.compile)."""

from automodel.components.distributed.config import CompileConfig, DistEnvConfig, DistributedConfig, DistributedError
from automodel.components.distributed.init_utils import (
    DistInfo,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    initialize_distributed,
)
from automodel.components.distributed.parallelize import parallelize_model

__all__ = [
    "CompileConfig",
    "DistEnvConfig",
    "DistInfo",
    "DistributedConfig",
    "DistributedError",
    "all_reduce_sum",
    "barrier",
    "destroy_distributed",
    "initialize_distributed",
    "parallelize_model",
]
