"""Muon: momentum whose update is orthogonalised by a Newton-Schulz iteration, for the hidden weight matrices.

Reference: Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024), and Liu et al.,
"Muon is Scalable for LLM Training" (Moonlight, 2025) for the AdamW-matched update size.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from automodel.components.optim._adamw import adamw_update, check_adam_hyperparameters
from automodel.components.optim._sharding import full, shard_like
from automodel.components.optim.param_groups import name_matches, named_param_groups
from automodel.components.optim.scheduler import OptimError

logger = logging.getLogger(__name__)

# 2-D parameters whose name matches one of these go to AdamW: embeddings and output heads are lookup tables and
# per-token classifiers, not linear maps between hidden states, so orthogonalising their update does not fit.
DEFAULT_ADAMW_PATTERNS = ("embed", "lm_head", "wte", "wpe")
ADJUST_LR_CHOICES = ("spectral", "match_rms_adamw", "none")
NS_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon write-up: a steep slope at 0 so that small singular
# values grow fast, at the price of landing in roughly [0.7, 1.2] instead of exactly 1 (enough for training).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: torch.Tensor, num_steps: int, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately ``U @ V.T`` for ``matrix = U @ S @ V.T``: every singular value pushed towards 1.

    Each step maps ``X -> a X + b (X X^T) X + c (X X^T)^2 X``, i.e. applies the odd polynomial
    ``a s + b s^3 + c s^5`` to each singular value. Dividing by the Frobenius norm first puts them in [0, 1], which
    keeps the iteration stable in bf16. Returns ``dtype``.
    """
    a, b, c = _NS_COEFFICIENTS
    x = matrix.to(dtype)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate with the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(num_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * (gram @ gram)) @ x
    return x.T if transposed else x


def lr_scale(shape: Sequence[int], adjust_lr: str) -> float:
    """Multiplier of the lr for a ``rows x cols`` matrix (see :class:`Muon`)."""
    rows, cols = shape
    if adjust_lr == "spectral":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def is_muon_param(name: str, param: torch.Tensor, adamw_patterns: Sequence[str]) -> bool:
    """A 2-D parameter whose name matches none of ``adamw_patterns``."""
    return param.ndim == 2 and not any(name_matches(name, p) for p in adamw_patterns)


class Muon(torch.optim.Optimizer):
    """Muon for hidden matrices, AdamW for everything else, in one optimizer.

    Which parameters get Muon: exactly the 2-D ones whose name matches none of ``adamw_patterns`` (default
    ``embed``, ``lm_head``, ``wte``, ``wpe``; substring, or a glob when a pattern has ``*?[``). Embeddings, the output
    head, norms, biases and parameters with other shapes get AdamW with ``adamw_lr``, ``adamw_betas``,
    ``adamw_eps`` and ``adamw_weight_decay`` (default: ``weight_decay``). Names are required: pass
    ``(name, parameter)`` pairs. A model with no matrix for Muon raises :class:`OptimError`.

    Muon step for a matrix ``W`` (``rows x cols``) with gradient ``G``: ``B = momentum * B + G``; ``U = G + momentum
    * B`` (``nesterov``) or ``B``; ``O = newton_schulz(U)``; ``W -= lr * (weight_decay * W + scale * O)``.
    ``adjust_lr`` sets ``scale``: ``"spectral"`` (default) ``sqrt(max(1, rows / cols))``, which keeps the update's
    spectral norm per unit of input the same for tall matrices; ``"match_rms_adamw"`` ``0.2 * sqrt(max(rows,
    cols))``, which gives the update the RMS of a typical AdamW update so that AdamW's lr and weight decay can be
    reused (Moonlight); ``"none"`` 1. ``ns_dtype`` is the Newton-Schulz precision (bf16 is the usual choice; float32
    for exact comparisons).

    Groups: every Muon group comes before every AdamW group, so ``param_groups[0]["lr"]`` is the Muon lr that the
    LR scheduler's ``max_lr`` / ``min_lr`` refer to; AdamW groups keep their ratio ``adamw_lr / lr``. Dict groups
    may set ``lr``, ``weight_decay``, ``adamw_lr``, ``adamw_weight_decay`` and the other keys per group.

    FSDP2: parameters are DTensors sharded on dim 0. The momentum buffer stays sharded; each step all-gathers the
    momentum-corrected update of each matrix, every rank runs Newton-Schulz on the whole matrix (the same result
    everywhere) and applies its own shard. Gather cost: one all-gather per matrix per step; the Newton-Schulz work
    is repeated on each rank rather than split between them.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        adjust_lr: str = "spectral",
        ns_dtype: str = "bfloat16",
        adamw_lr: float = 3e-4,
        adamw_betas: Sequence[float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float | None = None,
        adamw_patterns: Sequence[str] = DEFAULT_ADAMW_PATTERNS,
    ) -> None:
        adamw_weight_decay = weight_decay if adamw_weight_decay is None else adamw_weight_decay
        if lr < 0:
            raise OptimError(f"Muon: optimizer.lr={lr} must be >= 0")
        if not 0.0 <= momentum < 1.0:
            raise OptimError(f"Muon: optimizer.momentum={momentum} must be in [0, 1)")
        if not isinstance(ns_steps, int) or ns_steps < 1:
            raise OptimError(f"Muon: optimizer.ns_steps={ns_steps!r} must be an integer >= 1 (5 is usual)")
        if weight_decay < 0:
            raise OptimError(f"Muon: optimizer.weight_decay={weight_decay} must be >= 0")
        if adjust_lr not in ADJUST_LR_CHOICES:
            raise OptimError(f"Muon: optimizer.adjust_lr={adjust_lr!r} is not one of {list(ADJUST_LR_CHOICES)}")
        if ns_dtype not in NS_DTYPES:
            raise OptimError(f"Muon: optimizer.ns_dtype={ns_dtype!r} is not one of {list(NS_DTYPES)}")
        check_adam_hyperparameters("Muon", "adamw_", adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay)
        if isinstance(adamw_patterns, str):
            adamw_patterns = [adamw_patterns]

        muon_groups: list[dict[str, Any]] = []
        adamw_groups: list[dict[str, Any]] = []
        for group in named_param_groups(params, "Muon"):
            options = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            adamw_options = {k.removeprefix("adamw_"): options.pop(k) for k in list(options) if k.startswith("adamw_")}
            matrices = [(n, p) for n, p in group["params"] if is_muon_param(n, p, adamw_patterns)]
            others = [(n, p) for n, p in group["params"] if not is_muon_param(n, p, adamw_patterns)]
            if matrices:
                muon_groups.append({**options, "params": matrices, "use_muon": True})
            if others:
                adamw_groups.append(
                    {
                        **{k: v for k, v in options.items() if k not in ("lr", "weight_decay")},
                        "params": others,
                        "use_muon": False,
                        "lr": adamw_options.get("lr", adamw_lr),
                        "weight_decay": adamw_options.get("weight_decay", adamw_weight_decay),
                        "betas": tuple(adamw_options.get("betas", adamw_betas)),
                        "eps": adamw_options.get("eps", adamw_eps),
                    }
                )
        if not muon_groups:
            everything = [(n, p) for g in adamw_groups for n, p in g["params"]]
            shown = ", ".join(f"{n} {tuple(p.shape)}" for n, p in everything[:4]) + (", ..." if everything[4:] else "")
            raise OptimError(
                f"Muon found no hidden weight matrix among the {len(everything)} trainable parameters ({shown}): "
                f"it orthogonalises 2-D parameters whose name matches none of adamw_patterns={list(adamw_patterns)}. "
                "Use AdamW for this model (optimizer._target_: torch.optim.AdamW) or narrow optimizer.adamw_patterns"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "nesterov": nesterov,
            "ns_steps": ns_steps,
            "weight_decay": weight_decay,
            "adjust_lr": adjust_lr,
            "ns_dtype": ns_dtype,
            "betas": tuple(adamw_betas),
            "eps": adamw_eps,
        }
        super().__init__(muon_groups + adamw_groups, defaults)
        num_muon = sum(len(g["params"]) for g in muon_groups)
        num_adamw = sum(len(g["params"]) for g in adamw_groups)
        logger.info("Muon: %d hidden matrices orthogonalised, %d other parameters on AdamW", num_muon, num_adamw)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_step(group)
                continue
            for param in group["params"]:
                if param.grad is not None:
                    adamw_update(
                        param,
                        param.grad,
                        self.state[param],
                        lr=group["lr"],
                        betas=tuple(group["betas"]),
                        eps=group["eps"],
                        weight_decay=group["weight_decay"],
                    )
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        for param in group["params"]:
            grad = param.grad
            if grad is None:
                continue
            state = self.state[param]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            buffer = state["momentum_buffer"]
            buffer.mul_(momentum).add_(grad)
            update = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
            # The one gather: Newton-Schulz needs the whole matrix (a no-op for plain tensors).
            ortho = newton_schulz(full(update), group["ns_steps"], NS_DTYPES[group["ns_dtype"]])
            ortho = ortho.to(param.dtype) * lr_scale(param.shape, group["adjust_lr"])
            param.mul_(1 - lr * weight_decay)
            param.add_(shard_like(ortho, param), alpha=-lr)
