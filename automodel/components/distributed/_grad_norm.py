"""Gradient clipping that works for plain tensors and for DTensors on several meshes at once."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor


@torch.no_grad()
def clip_grad_norm_(
    parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float, norm_type: float = 2.0
) -> float:
    """Scale the gradients in place so that their total `norm_type`-norm is at most `max_norm`; return the total norm
    (before clipping) as a float, the same on every rank.

    Plain gradients (single process, DDP) are taken as they are. DTensor gradients (FSDP2 shards, TP shards, both)
    are grouped by mesh: torch's own clipping refuses a mix of meshes, which is what TP without FSDP produces (TP'd
    weights on the tp mesh, the rest plain). Each group's norm is reduced over its mesh and the groups are combined:
    `(sum_g norm_g^p)^(1/p)`, or the max for the inf-norm. `max_norm=inf` only measures.
    """
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    groups: dict[object, list[torch.Tensor]] = {}
    for grad in grads:
        key = grad.device_mesh if isinstance(grad, DTensor) else grad.device
        groups.setdefault(key, []).append(grad)
    norm_type = float(norm_type)
    group_norms = []
    for group in groups.values():
        norm = torch.nn.utils.get_total_norm(group, norm_type=norm_type)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()  # sums (or maxes) the partial norms over the mesh: one collective per group
        group_norms.append(norm.float().cpu())
    stacked = torch.stack(group_norms)
    if math.isinf(norm_type):
        total = stacked.max().item()
    else:
        total = stacked.pow(norm_type).sum().pow(1.0 / norm_type).item()  # host sync: the caller logs it
    if math.isfinite(max_norm):
        clip_coef = max_norm / (total + 1e-6)
        if clip_coef < 1.0:
            for group in groups.values():
                torch._foreach_mul_(group, clip_coef)
    return total
