"""The `mixed_precision:` and `clip_grad_norm:` sections.

The default is bf16 autocast over fp32 master weights: bf16 matmuls run ~2x faster than fp32 on this class of CPU
(and are the norm on GPUs), while fp32 weights keep small updates from rounding away (pure-bf16 weights barely move
at lr 1e-5).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Literal

import torch

from automodel.components.training.errors import TrainingError

logger = logging.getLogger(__name__)

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "none": None, "fp32": None, "float32": None}


@dataclass
class MixedPrecisionConfig:
    """`mixed_precision: {dtype: bf16 | none}` -- autocast dtype for forward passes (weights stay as loaded)."""

    dtype: Literal["bf16", "bfloat16", "none", "fp32", "float32", "fp16", "float16"] | None = "bf16"

    def __post_init__(self) -> None:
        if self.dtype is None:  # an unquoted `none` in YAML
            self.dtype = "none"
        if self.dtype in ("fp16", "float16"):
            raise TrainingError(
                "mixed_precision.dtype: fp16 autocast needs loss scaling, which this recipe does not do (and on CPU "
                "fp16 matmuls are ~100x slower than bf16); use bf16, or none for fp32"
            )
        if self.dtype not in _DTYPES:
            raise TrainingError(f"mixed_precision.dtype: {self.dtype!r} is not one of bf16, none")

    @property
    def torch_dtype(self) -> torch.dtype | None:
        return _DTYPES[self.dtype]

    def check(self, model: torch.nn.Module, device: torch.device) -> None:
        """Refuse weight dtypes that cannot train well on `device`; warn about pure low-precision weights."""
        dtypes = {p.dtype for p in model.parameters() if p.requires_grad}
        if torch.float16 in dtypes and device.type == "cpu":
            raise TrainingError(
                "the model's weights are float16, which runs ~100x slower than bf16 on CPU; load it with "
                "model.torch_dtype: float32 (bf16 autocast is the default)"
            )
        if dtypes and dtypes <= {torch.bfloat16, torch.float16}:
            logger.warning(
                "trainable weights are %s: small updates may round away; model.torch_dtype: float32 with "
                "mixed_precision bf16 trains more reliably",
                ", ".join(sorted(str(d) for d in dtypes)),
            )
        if self.torch_dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise TrainingError("mixed_precision.dtype: this GPU has no bf16 support; use none (fp32)")

    def cast_frozen_linear_weights(self, model: torch.nn.Module) -> int:
        """Store frozen linear weights in the autocast dtype; returns how many tensors were cast.

        Under autocast a linear layer casts its fp32 weight to bf16 on every forward; for a frozen weight (a LoRA
        base model) that copy is pure overhead, and storing it in bf16 gives bit-identical matmuls with half the
        memory. Weights shared with another module (tied embeddings) and layers that also read the weight outside
        autocast (DoRA's weight norm) keep their dtype.
        """
        if self.torch_dtype is None:
            return 0
        owners: dict[int, int] = {}
        for module in model.modules():
            for param in module.parameters(recurse=False):
                owners[id(param)] = owners.get(id(param), 0) + 1
        cast = 0
        for module in model.modules():
            if not isinstance(module, torch.nn.Linear) or hasattr(module, "lora_magnitude_vector"):
                continue
            for name in ("weight", "bias"):
                param = getattr(module, name, None)
                if param is None or param.requires_grad or owners[id(param)] > 1 or param.dtype == self.torch_dtype:
                    continue
                param.data = param.data.to(self.torch_dtype)
                cast += 1
        return cast

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """A reusable context manager for forward passes."""
        if self.torch_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.torch_dtype)


@dataclass
class ClipGradNormConfig:
    """`clip_grad_norm: {max_norm: 1.0}`; `max_norm: none` disables clipping (the norm is still logged)."""

    max_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if self.max_norm is not None and not self.max_norm > 0:
            raise TrainingError(f"clip_grad_norm.max_norm must be > 0 or none, got {self.max_norm}")
