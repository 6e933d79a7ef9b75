"""The YAML sections `dist_env:`, `distributed:` and `compile:`, as validated dataclasses.

Everything that can be checked before a weight is loaded is checked here: the sizes against the world size, the
device (context parallel and Megatron-FSDP need CUDA), the optional package, and (`validate_for_model`) the
attention heads against `tp_size`. Every message names every operand.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Literal

import torch

from automodel._shared.errors import UserError

STRATEGIES = ("fsdp2", "ddp", "megatron_fsdp")

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
}


class DistributedError(UserError):
    """A distributed setting the user can fix (sizes, strategy, backend)."""


@dataclass
class DistEnvConfig:
    """`dist_env:` -- how the process group is created.

    `backend: nccl` on a machine without CUDA falls back to gloo with a warning, so GPU configs run unchanged on CPU.
    """

    backend: Literal["nccl", "gloo", "auto"] = "auto"
    timeout_minutes: float = 30.0

    def __post_init__(self) -> None:
        if self.backend not in ("nccl", "gloo", "auto"):
            raise DistributedError(f"dist_env.backend: {self.backend!r} is not one of nccl, gloo, auto")
        if not self.timeout_minutes > 0:
            raise DistributedError(f"dist_env.timeout_minutes must be > 0, got {self.timeout_minutes}")


@dataclass
class DistributedConfig:
    """`distributed:` -- how the model is parallelised across processes.

    The world is a mesh `dp_replicate x dp_shard x cp x tp`; `dp_size = dp_replicate x dp_shard` is the
    data-parallel size (`none`: whatever the world size leaves after tp and cp). `strategy` picks how the data-parallel
    ranks hold the model: `fsdp2` shards it (HSDP when `dp_replicate_size > 1`), `ddp` replicates it,
    `megatron_fsdp` uses NVIDIA's Megatron-FSDP (CUDA, `pip install automodel[megatron]`).
    `param_dtype` / `reduce_dtype` are FSDP2's mixed precision (none: bf16 / fp32 on CUDA, fp32 / fp32 on CPU).
    """

    strategy: Literal["fsdp2", "ddp", "megatron_fsdp"] = "fsdp2"
    dp_size: int | None = None
    dp_replicate_size: int = 1
    tp_size: int = 1
    cp_size: int = 1
    sequence_parallel: bool = False
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True
    param_dtype: str | None = None
    reduce_dtype: str | None = None
    find_unused_parameters: bool = False  # DDP: for models with trainable parameters a forward may not use

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise DistributedError(
                f"distributed.strategy: {self.strategy!r} is not available; supported: {', '.join(STRATEGIES)}"
            )
        for key in ("dp_replicate_size", "tp_size", "cp_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DistributedError(f"distributed.{key} must be an integer >= 1, got {value!r}")
        if self.dp_size is not None and (not isinstance(self.dp_size, int) or self.dp_size < 1):
            raise DistributedError(f"distributed.dp_size must be >= 1 or none (inferred), got {self.dp_size!r}")
        if self.sequence_parallel and self.tp_size == 1:
            raise DistributedError(
                "distributed.sequence_parallel shards activations over the tensor-parallel ranks, but tp_size is 1; "
                "set tp_size > 1 or sequence_parallel: false"
            )
        if self.strategy == "ddp":
            for key in ("tp_size", "cp_size", "dp_replicate_size"):
                if getattr(self, key) != 1:
                    raise DistributedError(
                        f"distributed.{key}: {getattr(self, key)} is not supported with strategy 'ddp' (data "
                        "parallelism only); use strategy: fsdp2, or set it to 1"
                    )
        for key in ("param_dtype", "reduce_dtype"):
            value = getattr(self, key)
            if value is not None and str(value).lower().removeprefix("torch.") not in _DTYPES:
                raise DistributedError(
                    f"distributed.{key}: {value!r} is not a dtype; expected one of {', '.join(_DTYPES)} or none"
                )

    # --- sizes ------------------------------------------------------------------------------------------------
    def resolve_dp_size(self, world_size: int) -> int:
        """The data-parallel size (dp_replicate x dp_shard) for `world_size` processes; checks that the sizes fit."""
        model_parallel = self.tp_size * self.cp_size
        if self.dp_size is None:
            if world_size % model_parallel:
                raise DistributedError(
                    f"distributed: tp_size({self.tp_size}) x cp_size({self.cp_size}) = {model_parallel} does not "
                    f"divide the world size({world_size}); choose sizes whose product divides the number of processes"
                )
            dp_size = world_size // model_parallel
        else:
            dp_size = self.dp_size
        if dp_size % self.dp_replicate_size:
            raise DistributedError(
                f"distributed: dp_size({dp_size}) is not a multiple of dp_replicate_size({self.dp_replicate_size}); "
                "dp_size = dp_replicate_size x dp_shard, so pick a dp_replicate_size that divides it"
            )
        dp_shard = dp_size // self.dp_replicate_size
        product = self.dp_replicate_size * dp_shard * self.tp_size * self.cp_size
        if product != world_size:
            raise DistributedError(
                f"distributed: dp_replicate({self.dp_replicate_size}) x dp_shard({dp_shard}) x tp({self.tp_size}) x "
                f"cp({self.cp_size}) = {product} != world size({world_size}); set dp_size: none to infer it, or "
                "change the sizes so that they multiply to the number of processes"
            )
        return dp_size

    def validate(self, world_size: int, device: torch.device | str) -> int:
        """Check everything that does not need the model: sizes, device, optional packages. Returns `dp_size`."""
        dp_size = self.resolve_dp_size(world_size)
        device_type = torch.device(device).type
        if self.cp_size > 1 and device_type != "cuda":
            raise DistributedError(
                f"distributed.cp_size: {self.cp_size} needs CUDA (context parallelism shards attention with "
                f"ring SDPA, which has no CPU kernel); this process runs on {device_type}: set cp_size: 1"
            )
        if self.strategy == "megatron_fsdp":
            if device_type != "cuda":
                raise DistributedError(
                    f"distributed.strategy: megatron_fsdp needs CUDA GPUs; this process runs on {device_type}: use "
                    "strategy: fsdp2 (same sharding, runs everywhere)"
                )
            if importlib.util.find_spec("megatron_fsdp") is None:
                raise DistributedError(
                    "distributed.strategy: megatron_fsdp needs the megatron-fsdp package: "
                    "pip install 'automodel[megatron]'"
                )
        return dp_size

    # --- mixed precision ----------------------------------------------------------------------------------------
    def mixed_precision_dtypes(self, device: torch.device | str) -> tuple[torch.dtype | None, torch.dtype | None]:
        """FSDP2's (param_dtype, reduce_dtype); None means "the parameters' own dtype"."""
        on_cuda = torch.device(device).type == "cuda"
        # bf16 compute with fp32 gradient reduction is the usual GPU recipe; on CPU bf16 is opt-in because it
        # changes results (tests compare fp32 runs exactly).
        param = _parse_dtype(self.param_dtype) if self.param_dtype is not None else None
        reduce = _parse_dtype(self.reduce_dtype) if self.reduce_dtype is not None else None
        if on_cuda and self.param_dtype is None:
            param = torch.bfloat16
        if on_cuda and self.reduce_dtype is None:
            reduce = torch.float32
        return param, reduce


def _parse_dtype(name: str) -> torch.dtype:
    return _DTYPES[str(name).lower().removeprefix("torch.")]


def validate_for_model(config: DistributedConfig, model_config: Any) -> None:
    """Check `config` against a Hugging Face model config (before weights are loaded): tp_size must divide the number
    of attention heads and KV heads, and a tensor-parallel plan must exist for the model."""
    if config.tp_size == 1:
        return
    model_type = getattr(model_config, "model_type", type(model_config).__name__)
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    num_heads = getattr(text_config, "num_attention_heads", None)
    num_kv_heads = getattr(text_config, "num_key_value_heads", None) or num_heads
    for key, value in (("num_attention_heads", num_heads), ("num_key_value_heads", num_kv_heads)):
        if isinstance(value, int) and value % config.tp_size:
            raise DistributedError(
                f"distributed.tp_size({config.tp_size}) must divide the model's {key}({value}) ({model_type}): "
                "each tensor-parallel rank holds whole attention heads; choose a tp_size that divides "
                f"{value}"
            )
    # Imported here: the plans module imports DistributedError from this one.
    from automodel.components.distributed._tp_plans import check_tp_support

    check_tp_support(model_config, sequence_parallel=config.sequence_parallel)


@dataclass
class CompileConfig:
    """`compile:` -- torch.compile of the model (each decoder layer when `per_layer`, which compiles faster)."""

    enabled: bool = False
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = None
    backend: str = "inductor"
    per_layer: bool = True
