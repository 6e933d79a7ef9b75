"""Parsing the `torch_dtype` / `dtype` option of the model section."""

from __future__ import annotations

import logging

import torch

from automodel.components._transformers._errors import ModelLoadError

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def parse_dtype(torch_dtype: torch.dtype | str | None, dtype: torch.dtype | str | None) -> torch.dtype | str:
    """The dtype to pass to transformers: a floating torch.dtype or "auto" (the checkpoint's own); default float32.

    `torch_dtype` is the name NeMo configs (and transformers 4) use, `dtype` the transformers 5 one.
    """
    if (
        torch_dtype is not None
        and dtype is not None
        and _parse_one(torch_dtype, "torch_dtype") != _parse_one(dtype, "dtype")
    ):
        raise ModelLoadError(
            f"torch_dtype={torch_dtype!r} and dtype={dtype!r} disagree; set only one of them (they are the same option)"
        )
    key, value = ("dtype", dtype) if dtype is not None else ("torch_dtype", torch_dtype)
    # fp32 by default: these are the master weights; the recipe runs the forward pass under bf16 autocast.
    parsed = torch.float32 if value is None else _parse_one(value, key)
    if parsed == torch.float16 and not torch.cuda.is_available():
        logger.warning("%s=float16 without CUDA: fp16 matmuls are very slow on CPU; prefer bfloat16", key)
    return parsed


def _parse_one(value: object, key: str) -> torch.dtype | str:
    if isinstance(value, torch.dtype):
        if not value.is_floating_point:
            raise ModelLoadError(f"{key}={value} is not a floating-point dtype; use float32, bfloat16 or float16")
        return value
    if isinstance(value, str):
        name = value.strip().lower().removeprefix("torch.")
        if name == "auto":
            return "auto"
        if name in _DTYPES:
            return _DTYPES[name]
    choices = ", ".join([*_DTYPES, "auto"])
    raise ModelLoadError(f"{key}={value!r} is not a dtype this loader knows; expected one of: {choices}")
