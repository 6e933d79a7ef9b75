"""What a checkpoint records about its model, and how a resumed model is checked against it.

The structural keys (architecture, parameter count, vocabulary) catch a different model. They cannot tell apart two
checkpoints of one architecture (a base model and its instruct version): a LoRA adapter resumed onto the wrong one
would silently train on a mix. For that, ``frozen_fingerprint`` hashes a few values of every frozen parameter.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import torch
from torch import nn
from torch.distributed.tensor import DTensor

logger = logging.getLogger(__name__)

# Identity keys that make two models incompatible; other keys the recipe passes (name_or_path, dtype...) are
# informative only, since resuming the same architecture from a copied or converted folder is legitimate.
STRUCTURAL_IDENTITY_KEYS = ("architecture", "num_parameters", "vocab_size")
FINGERPRINT_KEY = "frozen_fingerprint"
_SAMPLES = 64  # values per parameter: enough that two fine-tunes of one base differ, cheap enough for 70B models


def frozen_fingerprint(model: nn.Module) -> dict[str, Any] | None:
    """A fingerprint of the frozen parameters (the base weights under PEFT): ``{"num_params", "names", "values"}``.

    ``values`` hashes, for each frozen parameter sorted by name, its shape and ~64 evenly strided elements rounded to
    bf16 (so an fp32 and a bf16 load of the same weights match); ``names`` hashes the names alone, so a changed set
    of frozen parameters is told apart from changed weights. ``{}`` when nothing is frozen (full fine-tuning), None
    (with a warning) while the weights are still on the meta device: compute it after they are loaded.

    Collective under FSDP2 / TP: every rank calls it (each DTensor parameter is gathered, one at a time).
    """
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        model = model.module
    frozen = sorted((name, p) for name, p in model.named_parameters() if not p.requires_grad)
    if not frozen:
        return {}
    if any(p.is_meta for _, p in frozen):
        logger.warning(
            "the frozen weights are still on the meta device, so the checkpoint records no fingerprint of the base "
            "model and a resume cannot check it; compute the model identity after the weights are loaded"
        )
        return None
    names, values = hashlib.sha256(), hashlib.sha256()
    with torch.no_grad():
        for name, param in frozen:
            full = param.full_tensor() if isinstance(param, DTensor) else param
            flat = full.detach().reshape(-1)
            count = min(_SAMPLES, flat.numel())
            index = torch.arange(count, device=flat.device) * flat.numel() // max(count, 1)
            sample = flat[index].to(torch.bfloat16).view(torch.int16).cpu()
            names.update(f"{name}\n".encode())
            values.update(f"{name}:{tuple(full.shape)}:".encode())
            values.update(sample.numpy().astype("<i2").tobytes())
            del full, flat
    return {"num_params": len(frozen), "names": names.hexdigest()[:16], "values": values.hexdigest()[:16]}


def different_base(saved: dict[str, Any], current: dict[str, Any]) -> bool:
    """True when both identities fingerprint the same set of frozen parameters and their values differ."""
    a, b = saved.get(FINGERPRINT_KEY), current.get(FINGERPRINT_KEY)
    if not (isinstance(a, dict) and isinstance(b, dict) and a and b):
        return False  # an old checkpoint, full fine-tuning, or not computed: nothing to compare
    return a.get("names") == b.get("names") and a.get("values") != b.get("values")


def _count(n: Any) -> str:
    if not isinstance(n, int | float):
        return str(n)
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + suffix
    return str(n)


def describe(identity: dict[str, Any], keys: list[str]) -> str:
    parts = [str(identity.get("architecture", "model"))]
    if "num_parameters" in identity:
        parts.append(_count(identity["num_parameters"]))
    parts += [f"{key} {identity[key]}" for key in keys]
    return " ".join(parts)
