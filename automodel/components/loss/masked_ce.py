"""Masked cross-entropy: the token-level loss of causal-LM fine-tuning.

Labels are already shifted by the data pipeline (``labels[t]`` is the token to predict at position ``t``, or
``ignore_index``), so this loss never shifts. To make gradient accumulation and data parallelism equal one big
batch, the recipe passes ``num_label_tokens``: the supervised-token count of the whole global batch. Each
micro-batch then contributes ``sum(CE) / num_label_tokens`` and the accumulated gradients add up exactly to the
gradient of the big batch's mean loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from automodel._shared.errors import UserError

_REDUCTIONS = ("mean", "sum")


class LossError(UserError):
    """A loss was configured or called with invalid arguments."""


class MaskedCrossEntropy:
    """Cross-entropy over positions whose label is not ``ignore_index``.

    Args:
        fp32_upcast: compute log-softmax in float32 (bf16 logits lose ~3 digits in the log-sum-exp otherwise).
        ignore_index: label value of positions without loss.
        reduction: what to divide by when ``num_label_tokens`` is not given: ``"mean"`` divides the sum by the
            number of supervised tokens in this call, ``"sum"`` returns the plain sum. When ``num_label_tokens`` is
            given, both return ``sum / num_label_tokens``.
    """

    def __init__(self, fp32_upcast: bool = True, ignore_index: int = -100, reduction: str = "mean") -> None:
        if reduction not in _REDUCTIONS:
            raise LossError(
                f"loss_fn.reduction={reduction!r} is not supported; choose one of {list(_REDUCTIONS)} "
                "('mean' divides by the supervised-token count, 'sum' returns the plain sum)"
            )
        self.fp32_upcast = fp32_upcast
        self.ignore_index = ignore_index
        self.reduction = reduction

    def __call__(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        num_label_tokens: int | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the loss of ``logits`` (``[B, T, V]`` or ``[N, V]``) against shifted ``labels`` (``[B, T]`` or ``[N]``).

        ``num_label_tokens`` is the supervised-token count to divide by (the whole global batch's in training); the
        caller guarantees it is > 0. Without it, a call with no supervised token returns a zero that keeps the graph.
        """
        if logits.shape[:-1] != labels.shape:
            raise LossError(
                f"logits of shape {tuple(logits.shape)} do not match labels of shape {tuple(labels.shape)}: "
                "expected logits [..., vocab] with the same leading dims as labels; labels must be shifted by the "
                "data pipeline and the model must return logits for every position"
            )
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1).long()
        if self.fp32_upcast:
            logits = logits.float()
        # With every position ignored, F.cross_entropy(reduction="sum") returns 0 still attached to logits.
        loss_sum = F.cross_entropy(logits, labels, ignore_index=self.ignore_index, reduction="sum")
        if num_label_tokens is not None:
            return loss_sum / num_label_tokens
        if self.reduction == "sum":
            return loss_sum
        # clamp instead of a branch on the count: no host-device sync, and 0 / 1 keeps the graph.
        num_local = (labels != self.ignore_index).sum().clamp(min=1)
        return loss_sum / num_local

    def __repr__(self) -> str:
        return (
            f"MaskedCrossEntropy(fp32_upcast={self.fp32_upcast}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r})"
        )
