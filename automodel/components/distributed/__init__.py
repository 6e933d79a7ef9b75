"""Process groups, device meshes and model parallelisation: FSDP2 (+HSDP), DDP, tensor / sequence parallel, context
parallel (CUDA), Megatron-FSDP (CUDA, optional), meta-device init with sharded weight loading."""

from automodel.components.distributed._context_parallel import context_parallel_batch
from automodel.components.distributed._grad_norm import clip_grad_norm_
from automodel.components.distributed._parallel_state import ParallelState, build_parallel_state
from automodel.components.distributed._sharded_load import load_model_weights_sharded
from automodel.components.distributed.config import (
    CompileConfig,
    DistEnvConfig,
    DistributedConfig,
    DistributedError,
    validate_for_model,
)
from automodel.components.distributed.fsdp2 import FSDP2Manager
from automodel.components.distributed.init_utils import (
    DistInfo,
    all_reduce_sum,
    barrier,
    destroy_distributed,
    initialize_distributed,
)
from automodel.components.distributed.megatron_fsdp import MegatronFSDPManager, shard_optimizer
from automodel.components.distributed.parallelize import (
    full_output_weight,
    model_class_name,
    no_sync,
    parallelize_model,
    unwrap,
)

__all__ = [
    "CompileConfig",
    "DistEnvConfig",
    "DistInfo",
    "DistributedConfig",
    "DistributedError",
    "FSDP2Manager",
    "MegatronFSDPManager",
    "ParallelState",
    "all_reduce_sum",
    "barrier",
    "build_parallel_state",
    "clip_grad_norm_",
    "context_parallel_batch",
    "destroy_distributed",
    "full_output_weight",
    "initialize_distributed",
    "load_model_weights_sharded",
    "model_class_name",
    "no_sync",
    "parallelize_model",
    "shard_optimizer",
    "unwrap",
    "validate_for_model",
]
