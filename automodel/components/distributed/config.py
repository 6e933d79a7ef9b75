"""The YAML sections `dist_env:`, `distributed:` and `compile:`, as validated dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from automodel._shared.errors import UserError

_STRATEGIES = ("ddp",)


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

    This version implements data parallelism with DDP (one full model replica per process). The size fields exist so
    reference configs parse; any size other than data parallelism is refused with a clear message.
    """

    strategy: str = "ddp"
    dp_size: int | None = None
    dp_replicate_size: int = 1
    tp_size: int = 1
    cp_size: int = 1
    sequence_parallel: bool = False
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in _STRATEGIES:
            raise DistributedError(
                f"distributed.strategy: {self.strategy!r} is not available; supported: {', '.join(_STRATEGIES)}"
            )
        for key in ("tp_size", "cp_size", "dp_replicate_size"):
            value = getattr(self, key)
            if value != 1:
                raise DistributedError(
                    f"distributed.{key}: {value} is not supported with strategy 'ddp' (only data parallelism); "
                    f"set it to 1"
                )
        if self.sequence_parallel:
            raise DistributedError("distributed.sequence_parallel needs tensor parallelism; set it to false")
        if self.dp_size is not None and self.dp_size < 1:
            raise DistributedError(f"distributed.dp_size must be >= 1 or none, got {self.dp_size}")

    def resolve_dp_size(self, world_size: int) -> int:
        """The data-parallel size for `world_size` processes; `dp_size: none` means all of them."""
        dp_size = world_size if self.dp_size is None else self.dp_size
        if dp_size != world_size:
            raise DistributedError(
                f"distributed.dp_size({dp_size}) x tp_size({self.tp_size}) x cp_size({self.cp_size}) "
                f"!= world size({world_size}); set dp_size to {world_size} or none"
            )
        return dp_size


@dataclass
class CompileConfig:
    """`compile:` -- torch.compile of the model (each decoder layer when `per_layer`, which compiles faster)."""

    enabled: bool = False
    mode: str | None = None
    fullgraph: bool = False
    dynamic: bool | None = None
    backend: str = "inductor"
    per_layer: bool = True
