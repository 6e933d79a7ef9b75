"""Whole-tensor views of FSDP2 (DTensor) parameters and back, for updates that need the full matrix.

Under FSDP2 a parameter, its gradient and any state made with ``zeros_like(param)`` are DTensors sharded on dim 0.
Element-wise updates work on the local shards as they are; a matrix function (Newton-Schulz, an eigenbasis
rotation) needs the whole matrix: ``full`` all-gathers it, the function runs on every rank (same input, same
result), and ``shard_like`` keeps this rank's piece of the result. Plain tensors pass through untouched.
"""

from __future__ import annotations

import torch

if torch.distributed.is_available():
    from torch.distributed.tensor import DTensor, Replicate
else:  # a torch build without distributed support has no DTensors to handle
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor as a plain tensor (an all-gather for a DTensor)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This rank's piece of ``whole`` laid out like ``like`` (a DTensor when ``like`` is one); no communication."""
    if not is_sharded(like):
        return whole
    mesh = like.device_mesh
    # Replicate -> Shard is a local slice, so every placement FSDP2/TP uses (uneven shards included) is handled.
    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
    return replicated.redistribute(mesh, like.placements)
