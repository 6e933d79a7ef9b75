"""SOAP: Adam run in the eigenbasis of Shampoo's preconditioner (Vyas et al., "SOAP: Improving and Stabilizing
Shampoo using Adam", 2024)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from automodel.components.optim._adamw import adamw_update, check_adam_hyperparameters
from automodel.components.optim._sharding import full, shard_like
from automodel.components.optim.scheduler import OptimError

logger = logging.getLogger(__name__)


def _gram(grad: torch.Tensor, dim: int) -> torch.Tensor:
    """``G G^T`` (dim 0, ``rows x rows``) or ``G^T G`` (dim 1, ``cols x cols``)."""
    return grad @ grad.T if dim == 0 else grad.T @ grad


def _rotate(matrix: torch.Tensor, state: dict[str, Any], dims: Sequence[int]) -> torch.Tensor:
    """Into the eigenbasis: ``Q0^T M Q1`` (a side without a preconditioner stays as it is)."""
    if 0 in dims:
        matrix = state["q_0"].T @ matrix
    if 1 in dims:
        matrix = matrix @ state["q_1"]
    return matrix


def _rotate_back(matrix: torch.Tensor, state: dict[str, Any], dims: Sequence[int]) -> torch.Tensor:
    """Out of the eigenbasis: ``Q0 M Q1^T``."""
    if 0 in dims:
        matrix = state["q_0"] @ matrix
    if 1 in dims:
        matrix = matrix @ state["q_1"].T
    return matrix


class SOAP(torch.optim.Optimizer):
    """Adam in the eigenbasis of Shampoo's two Kronecker factors, refreshed every ``precondition_frequency`` steps.

    For a matrix parameter with gradient ``G`` (``rows x cols``), SOAP keeps ``L = EMA(G G^T)`` and ``R = EMA(G^T
    G)`` (decay ``shampoo_beta``, default ``betas[1]``) and their eigenvectors ``QL``, ``QR``. Each step rotates the
    gradient, ``G' = QL^T G QR``, runs an AdamW step on ``G'`` (both moments live in the rotated basis), and rotates
    the normalised update back, ``QL U' QR^T``. Weight decay is decoupled as in AdamW.

    - The first step of a matrix only computes its eigenbasis (by ``eigh``) from that gradient and leaves the matrix
      unchanged: Adam's normalisation in a basis made from the same gradient would amplify rounding noise.
    - Every ``precondition_frequency`` steps the basis is refreshed by one power iteration and a QR decomposition
      (``QL <- qr(L QL)``, columns first sorted by their eigenvalue estimate, the second moment permuted alike) and
      the first moment is rotated into the new basis. This is much cheaper than an eigendecomposition.
    - A side longer than ``max_precond_dim`` is left unrotated (e.g. the vocabulary side of an embedding). 1-D
      parameters, parameters with more than 2 dims, and matrices with both sides too long get plain AdamW.

    Accepts plain parameters or ``(name, parameter)`` pairs. State per matrix: ``exp_avg``, ``exp_avg_sq`` (like the
    parameter) and ``gg_0``/``q_0`` (``rows x rows``), ``gg_1``/``q_1`` (``cols x cols``) in float32.

    FSDP2: the moments are sharded like the parameter. Each step all-gathers the gradient (the factors need all of
    it) and the normalised update (to rotate it back); the refresh also gathers both moments. The factors and
    eigenbases are computed identically on every rank and kept whole (not sharded) on each.
    """

    def __init__(
        self,
        params: Any,
        lr: float = 3e-3,
        betas: Sequence[float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        precondition_frequency: int = 10,
        max_precond_dim: int = 8192,
    ) -> None:
        check_adam_hyperparameters("SOAP", "", lr, betas, eps, weight_decay)
        if shampoo_beta is not None and not 0.0 <= shampoo_beta < 1.0:
            raise OptimError(f"SOAP: optimizer.shampoo_beta={shampoo_beta} must be in [0, 1) (or none: betas[1])")
        if not isinstance(precondition_frequency, int) or precondition_frequency < 1:
            raise OptimError(
                f"SOAP: optimizer.precondition_frequency={precondition_frequency!r} must be an integer >= 1 "
                "(steps between eigenbasis refreshes; 10 is usual)"
            )
        if not isinstance(max_precond_dim, int) or max_precond_dim < 1:
            raise OptimError(f"SOAP: optimizer.max_precond_dim={max_precond_dim!r} must be an integer >= 1")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "shampoo_beta": shampoo_beta,
            "eps": eps,
            "weight_decay": weight_decay,
            "precondition_frequency": precondition_frequency,
            "max_precond_dim": max_precond_dim,
        }
        super().__init__(params, defaults)

    @staticmethod
    def _preconditioned_dims(param: torch.Tensor, state: dict[str, Any], max_precond_dim: int) -> tuple[int, ...]:
        if state:  # decided when the state was created (or loaded); a changed max_precond_dim cannot reshape it
            return tuple(d for d in (0, 1) if f"q_{d}" in state)
        if param.ndim != 2:
            return ()
        return tuple(d for d in (0, 1) if param.shape[d] <= max_precond_dim)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                dims = self._preconditioned_dims(param, state, group["max_precond_dim"])
                if dims:
                    self._soap_update(param, state, group, dims)
                else:
                    adamw_update(
                        param,
                        param.grad,
                        state,
                        lr=group["lr"],
                        betas=tuple(group["betas"]),
                        eps=group["eps"],
                        weight_decay=group["weight_decay"],
                    )
        return loss

    def _soap_update(
        self, param: torch.Tensor, state: dict[str, Any], group: dict[str, Any], dims: tuple[int, ...]
    ) -> None:
        beta1, beta2 = group["betas"]
        shampoo_beta = beta2 if group["shampoo_beta"] is None else group["shampoo_beta"]
        grad = full(param.grad).float()  # gather: the factors need the whole gradient

        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            for d in dims:
                state[f"gg_{d}"] = _gram(grad, d) * (1 - shampoo_beta)
                state[f"q_{d}"] = torch.linalg.eigh(state[f"gg_{d}"]).eigenvectors.flip(-1)  # largest first
            return

        state["step"] += 1
        step = state["step"]
        rotated = shard_like(_rotate(grad, state, dims).to(param.dtype), param)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(rotated, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(rotated, rotated, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        normalized = exp_avg / (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        update = _rotate_back(full(normalized).float(), state, dims)  # gather: rotating back mixes all rows
        param.mul_(1 - group["lr"] * group["weight_decay"])
        param.add_(shard_like(update.to(param.dtype), param), alpha=-group["lr"] / bias_correction1)

        for d in dims:
            state[f"gg_{d}"].lerp_(_gram(grad, d), 1 - shampoo_beta)
        if step % group["precondition_frequency"] == 0:
            self._refresh_basis(param, state, dims)

    @staticmethod
    def _refresh_basis(param: torch.Tensor, state: dict[str, Any], dims: tuple[int, ...]) -> None:
        momentum = _rotate_back(full(state["exp_avg"]).float(), state, dims)  # back to the parameter's basis
        exp_avg_sq = full(state["exp_avg_sq"])
        for d in dims:
            q, gg = state[f"q_{d}"], state[f"gg_{d}"]
            # Power iteration needs the columns in decreasing eigenvalue order; diag(Q^T GG Q) estimates them.
            order = torch.argsort(((gg @ q) * q).sum(dim=0), descending=True)
            exp_avg_sq = exp_avg_sq.index_select(d, order)
            state[f"q_{d}"] = torch.linalg.qr(gg @ q[:, order]).Q
        state["exp_avg"].copy_(shard_like(_rotate(momentum, state, dims).to(param.dtype), param))
        state["exp_avg_sq"].copy_(shard_like(exp_avg_sq, param))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load as ``torch.optim.Optimizer`` does, then keep the factors in float32 (torch casts state to the
        parameter's dtype, which for bf16 parameters would make the eigenbasis too coarse)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            for key, value in state.items():
                if key.startswith(("gg_", "q_")) and isinstance(value, torch.Tensor):
                    state[key] = value.float()
