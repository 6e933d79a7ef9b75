"""Cross-entropy of ``hidden_states @ lm_head.T`` that never materialises the ``[tokens, vocab]`` logits.

The plain path computes logits for every position (``tokens x vocab``: 1,200 x 49,152 floats for 8 samples of 150
tokens with SmolLM2, ~240 MB in fp32 plus their gradient), then throws away all but the supervised positions. Here:

1. only positions whose label is not ``ignore_index`` are kept (in SFT that is the answer: often a few percent of
   the tokens), so the output projection runs on those rows only;
2. they are processed in chunks of ``chunk_size`` rows: each chunk's logits live just long enough to produce its
   loss and, in the same pass, the gradients with respect to the hidden states and the projection weight
   (``softmax - onehot``), which backward then only scales. Nothing is recomputed, and peak memory is one chunk of
   logits instead of all of them.

Numerics follow the plain path: the projection runs in the autocast dtype when autocast is on (bf16), the
log-sum-exp and the softmax in fp32. On a GPU, ``backend: liger`` uses Liger-Kernel's fused Triton kernel when it is
installed (``pip install 'automodel[liger]'``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from automodel.components.loss.masked_ce import LossError

logger = logging.getLogger(__name__)

_BACKENDS = ("auto", "chunked", "liger")


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


class _ChunkedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        chunk_size: int,
        compute_dtype: torch.dtype,
    ) -> torch.Tensor:
        needs_grad_h, needs_grad_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        w = weight.to(compute_dtype)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if needs_grad_h else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad_w else None
        # Autocast would re-cast inside the loop; the dtypes are set explicitly instead.
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                h = hidden[start : start + chunk_size].to(compute_dtype)
                t = targets[start : start + chunk_size]
                logits = (h @ w.T).float()  # [chunk, vocab]: the only vocab-sized tensor, freed after this chunk
                lse = torch.logsumexp(logits, dim=-1)
                loss += (lse - logits.gather(1, t[:, None]).squeeze(1)).sum()
                if grad_hidden is None and grad_weight is None:
                    continue
                # d(sum CE)/d logits = softmax - onehot, computed in place over the chunk's logits.
                probs = logits.sub_(lse[:, None]).exp_()
                probs[torch.arange(t.shape[0], device=t.device), t] -= 1.0
                dlogits = probs.to(compute_dtype)
                if grad_hidden is not None:
                    grad_hidden[start : start + chunk_size] = (dlogits @ w).to(hidden.dtype)
                if grad_weight is not None:
                    grad_weight += (dlogits.T @ h).float()
        ctx.save_for_backward(
            grad_hidden if grad_hidden is not None else torch.empty(0),
            grad_weight.to(weight.dtype) if grad_weight is not None else torch.empty(0),
        )
        return loss

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple:  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_output.to(torch.float32)
        dh = (grad_hidden * scale.to(grad_hidden.dtype)) if ctx.needs_input_grad[0] else None
        dw = (grad_weight * scale.to(grad_weight.dtype)) if ctx.needs_input_grad[1] else None
        return dh, dw, None, None, None


class FusedLinearCrossEntropy:
    """Cross-entropy of the output projection, computed from the last hidden states (NeMo Automodel's name).

    Called as ``loss_fn(hidden_states, labels, lm_weight, num_label_tokens=None)`` with ``hidden_states`` the model's
    final (normed) hidden states ``[B, T, H]``, ``labels`` already shifted ``[B, T]`` and ``lm_weight`` the output
    projection ``[V, H]``. Returns ``sum(CE) / num_label_tokens`` (or the mean over this call's supervised tokens).

    Args:
        chunk_size: rows of logits computed at once (memory ~ chunk_size x vocab x 4 bytes).
        ignore_index: label of positions without loss.
        backend: ``chunked`` (this implementation, any device), ``liger`` (Liger-Kernel, CUDA), ``auto`` (liger on
            CUDA when installed, else chunked).
    """

    needs_hidden_states = True  # the recipe passes hidden states and the projection weight instead of logits

    def __init__(self, chunk_size: int = 1024, ignore_index: int = -100, backend: str = "auto") -> None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise LossError(f"loss_fn.chunk_size must be a positive integer, got {chunk_size!r}")
        if backend not in _BACKENDS:
            raise LossError(f"loss_fn.backend={backend!r} is not supported; choose one of {list(_BACKENDS)}")
        self.chunk_size = chunk_size
        self.ignore_index = ignore_index
        self.backend = backend
        self._liger: Any = None

    def __call__(
        self,
        hidden_states: torch.Tensor,
        labels: torch.Tensor,
        lm_weight: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if hidden_states.shape[:-1] != labels.shape or hidden_states.shape[-1] != lm_weight.shape[-1]:
            raise LossError(
                f"hidden states {tuple(hidden_states.shape)}, labels {tuple(labels.shape)} and output weight "
                f"{tuple(lm_weight.shape)} do not fit: expected [..., hidden], [...] and [vocab, hidden]"
            )
        hidden = hidden_states.reshape(-1, hidden_states.shape[-1])
        flat_labels = labels.reshape(-1)
        keep = flat_labels != self.ignore_index
        # Only supervised rows reach the projection (a boolean gather: its backward scatters into the rest as 0).
        hidden, targets = hidden[keep], flat_labels[keep].long()
        if self._use_liger(hidden):
            loss_sum = self._liger_loss(hidden, lm_weight, targets)
        else:
            loss_sum = _ChunkedLinearCE.apply(hidden, lm_weight, targets, self.chunk_size, _compute_dtype(hidden))
        if num_label_tokens is not None:
            return loss_sum / num_label_tokens
        return loss_sum / targets.shape[0] if targets.shape[0] else loss_sum

    def _use_liger(self, hidden: torch.Tensor) -> bool:
        if self.backend == "chunked" or hidden.device.type != "cuda":
            if self.backend == "liger":
                raise LossError("loss_fn.backend: liger needs CUDA; use backend: chunked (or auto) on CPU")
            return False
        try:
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
        except ImportError:
            if self.backend == "liger":
                raise LossError("loss_fn.backend: liger needs Liger-Kernel: pip install 'automodel[liger]'") from None
            return False
        self._liger = liger_fused_linear_cross_entropy
        return True

    def _liger_loss(self, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        return self._liger(hidden.to(dtype), weight.to(dtype), targets, reduction="sum").float()

    def __repr__(self) -> str:
        return f"FusedLinearCrossEntropy(chunk_size={self.chunk_size}, backend={self.backend!r})"
