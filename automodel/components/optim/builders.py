"""Build the LR scheduler from the YAML ``lr_scheduler:`` section, and weight-decay param groups from a model."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from automodel._shared.errors import UserError
from automodel.components.optim.muon import Muon
from automodel.components.optim.param_groups import (
    DEFAULT_NO_DECAY_PATTERNS,
    build_named_param_groups,
    skips_weight_decay,
    split_names,
)
from automodel.components.optim.scheduler import (
    LrDecayStyle,
    OptimError,
    OptimizerParamScheduler,
    WeightDecayIncrStyle,
    WsdDecayStyle,
)
from automodel.components.optim.soap import SOAP

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
    lr_decay_style: LrDecayStyle | None = None,
    lr_warmup_steps: int = 0,
    lr_warmup_init: float = 0.0,
    max_lr: float | None = None,
    min_lr: float = 0.0,
    lr_decay_steps: int | None = None,
    wsd_decay_steps: int | None = None,
    lr_wsd_decay_style: WsdDecayStyle = "linear",
    start_weight_decay: float | None = None,
    end_weight_decay: float | None = None,
    weight_decay_incr_steps: int | None = None,
    weight_decay_incr_style: WeightDecayIncrStyle = "constant",
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


def build_param_groups(
    model: torch.nn.Module,
    weight_decay: float,
    no_decay_patterns: Iterable[str] = DEFAULT_NO_DECAY_PATTERNS,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into a decaying group and a no-decay group, for ``torch.optim`` optimizers.

    A parameter gets no weight decay when it has fewer than 2 dims (biases, norm scales: decaying them only shrinks
    the layer's output scale) or its name matches one of ``no_decay_patterns`` (case-insensitive substring, or a glob
    when the pattern has ``*?[``; see :mod:`~automodel.components.optim.param_groups`). Embeddings and
    matrices decay. Frozen parameters (``requires_grad=False``, e.g. under LoRA) are left out. Empty groups are
    dropped.
    """
    if weight_decay < 0:
        raise OptimError(f"optimizer.weight_decay={weight_decay} must be >= 0")
    patterns = list(no_decay_patterns)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if skips_weight_decay(name, param, patterns):
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


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "muon": Muon,
    "soap": SOAP,
}
_BUILD_KEYS = ("name", "lr", "weight_decay", "no_decay_patterns", "lr_multipliers")


def build_optimizer(
    params: Iterable[Any],
    name: str = "adamw",
    lr: float | None = None,
    weight_decay: float | None = None,
    no_decay_patterns: Sequence[str] = DEFAULT_NO_DECAY_PATTERNS,
    lr_multipliers: Mapping[str, float] | None = None,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """Build optimizer ``name`` over ``params`` with weight-decay and learning-rate param groups.

    ``params`` are ``(name, parameter)`` pairs (``model.named_parameters()``; plain parameters work for every
    optimizer but Muon, with only the ndim rule for weight decay). ``name`` is one of ``adamw``, ``adam``, ``muon``,
    ``soap``; ``lr`` and ``weight_decay`` default to that optimizer's own defaults, and ``kwargs`` go to it (checked
    against its signature).

    - Weight decay skips parameters with fewer than 2 dims and names matching ``no_decay_patterns``.
    - ``lr_multipliers`` maps name patterns to factors, e.g. ``{"*embed_tokens*": 0.1}``; the first matching
      pattern wins and a pattern matching nothing is an error. For Muon the factor scales ``adamw_lr`` too.
    - ``adamw`` / ``adam`` use torch's fused kernel when every parameter's device supports it (CPU and CUDA in torch
      2.13), else the foreach one; setting ``fused``, ``foreach`` or ``differentiable`` yourself turns this off.
    - ``param_groups[0]`` is a base-lr group (multiplier 1 when any parameter has it; a Muon group for Muon), which
      the LR scheduler's ``max_lr`` / ``min_lr`` refer to; the other groups keep their lr ratio to it.
    """
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise OptimError(f"optimizer.name={name!r} is not a known optimizer; choose one of {list(OPTIMIZERS)}")
    cls = OPTIMIZERS[key]
    signature = inspect.signature(cls)
    accepted = [
        p.name
        for p in signature.parameters.values()
        if p.name != "params" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        options = sorted(set(accepted) | set(_BUILD_KEYS))
        keys = ", ".join(f"optimizer.{k}" for k in unknown)
        verb = "is not an option" if len(unknown) == 1 else "are not options"
        raise OptimError(
            f"{keys} {verb} of {key} ({cls.__module__}.{cls.__qualname__}); accepted: {', '.join(options)}"
        )
    if lr is None:
        lr = float(signature.parameters["lr"].default)
    if weight_decay is None:
        weight_decay = float(signature.parameters["weight_decay"].default)

    params = list(params)
    extra_lrs, extra_weight_decays = {}, {}
    if key == "muon":  # Muon's AdamW part follows the same groups: same multipliers, same no-decay rule
        extra_lrs["adamw_lr"] = kwargs.get("adamw_lr", signature.parameters["adamw_lr"].default)
        adamw_weight_decay = kwargs.get("adamw_weight_decay")
        extra_weight_decays["adamw_weight_decay"] = weight_decay if adamw_weight_decay is None else adamw_weight_decay
    groups = build_named_param_groups(
        params,
        lr=lr,
        weight_decay=weight_decay,
        no_decay_patterns=no_decay_patterns,
        lr_multipliers=lr_multipliers,
        extra_lrs=extra_lrs,
        extra_weight_decays=extra_weight_decays,
    )
    if key in ("adamw", "adam") and not {"fused", "foreach", "differentiable"} & set(kwargs):
        _, tensors = split_names(params)
        kwargs["fused" if _fused_supported(tensors) else "foreach"] = True

    try:
        optimizer = cls(groups, lr=lr, weight_decay=weight_decay, **kwargs)
    except UserError:
        raise
    except (ValueError, TypeError, RuntimeError) as error:  # torch's own checks (betas, eps, fused + dtype...)
        raise OptimError(f"optimizer ({key}): {error}") from error
    logger.info(
        "Optimizer: %s%s, %d param groups (lr, weight_decay): %s",
        key,
        " (fused)" if kwargs.get("fused") else " (foreach)" if kwargs.get("foreach") else "",
        len(optimizer.param_groups),
        ", ".join(f"({g['lr']:.3g}, {g['weight_decay']:.3g}) x {len(g['params'])}" for g in optimizer.param_groups),
    )
    return optimizer


def _fused_supported(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether torch's fused Adam kernel takes all these parameters (device and dtype)."""
    try:  # private helper, but the one torch itself checks against; fall back to the devices it had in 2.13
        from torch.optim.optimizer import _get_fused_kernels_supported_devices

        devices = set(_get_fused_kernels_supported_devices())
    except ImportError:
        devices = {"cpu", "cuda"}
    return all(t.device.type in devices and t.is_floating_point() for t in tensors)
