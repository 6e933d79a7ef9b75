"""Build the LR scheduler from the YAML ``lr_scheduler:`` section, and weight-decay param groups from a model."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import torch

from automodel.components.optim.scheduler import OptimError, OptimizerParamScheduler

logger = logging.getLogger(__name__)

# Key names used by NeMo Automodel's and Megatron's configs for the same settings.
_ALIASES = {
    "init_lr": "lr_warmup_init",
    "lr_decay_iters": "lr_decay_steps",
    "lr_warmup_iters": "lr_warmup_steps",
    "lr_wsd_decay_iters": "wsd_decay_steps",
    "start_wd": "start_weight_decay",
    "end_wd": "end_weight_decay",
    "wd_incr_steps": "weight_decay_incr_steps",
    "wd_incr_style": "weight_decay_incr_style",
}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer,
    total_steps: int | None,
    *,
    lr_decay_style: str | None = None,
    lr_warmup_steps: int = 0,
    lr_warmup_init: float = 0.0,
    max_lr: float | None = None,
    min_lr: float = 0.0,
    lr_decay_steps: int | None = None,
    wsd_decay_steps: int | None = None,
    lr_wsd_decay_style: str = "linear",
    start_weight_decay: float | None = None,
    end_weight_decay: float | None = None,
    weight_decay_incr_steps: int | None = None,
    weight_decay_incr_style: str = "constant",
    # NeMo / Megatron spellings of the keys above (see _ALIASES).
    init_lr: float | None = None,
    lr_decay_iters: int | None = None,
    lr_warmup_iters: int | None = None,
    lr_wsd_decay_iters: int | None = None,
    start_wd: float | None = None,
    end_wd: float | None = None,
    wd_incr_steps: int | None = None,
    wd_incr_style: str | None = None,
) -> OptimizerParamScheduler:
    """Build an :class:`OptimizerParamScheduler` from the ``lr_scheduler:`` section's keys.

    ``total_steps`` is the run's number of optimizer steps (``lr_decay_steps`` defaults to it). The NeMo/Megatron
    spellings ``init_lr``, ``lr_decay_iters``, ``lr_warmup_iters``, ``lr_wsd_decay_iters``, ``start_wd``, ``end_wd``,
    ``wd_incr_steps`` and ``wd_incr_style`` are accepted for the keys above.

    ``lr_decay_style`` defaults to ``"cosine"`` (as in NeMo) when any other key is set, and to ``"constant"`` when
    none is: an absent or empty ``lr_scheduler`` section keeps the optimizer's lr throughout.
    """
    kwargs: dict[str, Any] = {
        "lr_decay_style": lr_decay_style,
        "lr_warmup_steps": lr_warmup_steps,
        "lr_warmup_init": lr_warmup_init,
        "max_lr": max_lr,
        "min_lr": min_lr,
        "lr_decay_steps": lr_decay_steps,
        "wsd_decay_steps": wsd_decay_steps,
        "lr_wsd_decay_style": lr_wsd_decay_style,
        "start_weight_decay": start_weight_decay,
        "end_weight_decay": end_weight_decay,
        "weight_decay_incr_steps": weight_decay_incr_steps,
        "weight_decay_incr_style": weight_decay_incr_style,
    }
    aliases = {
        "init_lr": init_lr,
        "lr_decay_iters": lr_decay_iters,
        "lr_warmup_iters": lr_warmup_iters,
        "lr_wsd_decay_iters": lr_wsd_decay_iters,
        "start_wd": start_wd,
        "end_wd": end_wd,
        "wd_incr_steps": wd_incr_steps,
        "wd_incr_style": wd_incr_style,
    }
    defaults: dict[str, Any] = build_lr_scheduler.__kwdefaults__ or {}
    for alias, value in aliases.items():
        if value is None:
            continue
        name = _ALIASES[alias]
        if kwargs[name] != defaults[name]:
            raise OptimError(f"lr_scheduler.{alias} and lr_scheduler.{name} are the same setting; keep only {name}")
        kwargs[name] = value
    if kwargs["lr_decay_style"] is None:
        customized = any(v != defaults[k] for k, v in kwargs.items())
        kwargs["lr_decay_style"] = "cosine" if customized else "constant"
    scheduler = OptimizerParamScheduler(optimizer, total_steps=total_steps, **kwargs)
    logger.info(
        "LR schedule: %s, warmup %d steps, decay over %s steps, lr %.3g -> %.3g",
        scheduler.lr_decay_style,
        scheduler.lr_warmup_steps,
        scheduler.lr_decay_steps,
        scheduler.max_lr,
        scheduler.min_lr,
    )
    return scheduler


DEFAULT_NO_DECAY_PATTERNS = ("bias", "norm")


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    no_decay_patterns: Iterable[str] = DEFAULT_NO_DECAY_PATTERNS,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into a decaying group and a no-decay group, for ``torch.optim`` optimizers.

    A parameter gets no weight decay when it has fewer than 2 dims (biases, norm scales: decaying them only shrinks
    the layer's output scale) or its name contains one of ``no_decay_patterns`` (case-insensitive). Embeddings and
    matrices decay. Frozen parameters (``requires_grad=False``, e.g. under LoRA) are left out. Empty groups are
    dropped.
    """
    if weight_decay < 0:
        raise OptimError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    patterns = [p.lower() for p in no_decay_patterns]
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or any(p in name.lower() for p in patterns):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise OptimError("the model has no trainable parameter (every requires_grad is False): nothing to optimize")
    return groups
