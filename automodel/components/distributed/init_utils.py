"""Create (and tear down) the torch.distributed process group from torchrun's environment."""

from __future__ import annotations

import atexit
import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # None: single process, no process group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _pick_backend(requested: str) -> str:
    if requested == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if requested == "nccl" and not torch.cuda.is_available():
        logger.warning("dist_env.backend is 'nccl' but CUDA is not available: using 'gloo' instead")
        return "gloo"
    return requested


def initialize_distributed(backend: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Join the process group that torchrun describes in the environment (RANK, WORLD_SIZE, LOCAL_RANK...).

    A plain `python` run (no WORLD_SIZE) is a single process and creates no process group.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size == 1:
        return DistInfo(rank=0, world_size=1, local_rank=0, device=device, backend=None)
    chosen = _pick_backend(backend)
    if not dist.is_initialized():
        dist.init_process_group(
            backend=chosen,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if chosen == "nccl" else None,
        )
        # Also on an error exit: a process group left alive at interpreter exit can abort the process (gloo's
        # threads), which would replace a clean exit status with SIGABRT.
        atexit.register(_destroy_at_exit)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device, backend=chosen)


def destroy_distributed(*, synchronize: bool = True) -> None:
    """Tear the process group down. `synchronize` first waits for every rank, so no rank closes its connections
    while a peer still uses them (gloo aborts the process then); the exit-time hook skips it, since after an error
    the other ranks may never arrive."""
    if dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


def _destroy_at_exit() -> None:
    destroy_distributed(synchronize=False)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place, returned for chaining); a no-op for a single process."""
    if dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value
