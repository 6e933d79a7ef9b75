"""The AdamW update that Muon (for embeddings, head, norms) and SOAP (for 1-D parameters) fall back to."""

from __future__ import annotations

import math
from typing import Any

import torch

from automodel.components.optim.scheduler import OptimError


def adamw_update(
    param: torch.Tensor,
    grad: torch.Tensor,
    state: dict[str, Any],
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> None:
    """One decoupled-weight-decay Adam step, written as ``torch.optim.AdamW``'s single-tensor path.

    Element-wise only, so it runs on FSDP2 shards as they are. ``state`` holds ``step`` (int), ``exp_avg`` and
    ``exp_avg_sq`` (shaped and sharded like ``param``).
    """
    if "exp_avg" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
    state["step"] += 1
    beta1, beta2 = betas
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    param.mul_(1 - lr * weight_decay)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** state["step"]
    bias_correction2_sqrt = math.sqrt(1 - beta2 ** state["step"])
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)


def check_adam_hyperparameters(owner: str, prefix: str, lr: float, betas: Any, eps: float, weight_decay: float) -> None:
    """Raise an OptimError naming the key when an Adam hyperparameter is out of range."""
    if lr < 0:
        raise OptimError(f"{owner}: optimizer.{prefix}lr={lr} must be >= 0")
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
        raise OptimError(f"{owner}: optimizer.{prefix}betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    if eps < 0:
        raise OptimError(f"{owner}: optimizer.{prefix}eps={eps} must be >= 0")
    if weight_decay < 0:
        raise OptimError(f"{owner}: optimizer.{prefix}weight_decay={weight_decay} must be >= 0")
