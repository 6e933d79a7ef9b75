"""Show collated VLM samples as text, marking the tokens that carry loss and shortening runs of image tokens."""

from __future__ import annotations

import re
from typing import Any

import torch

from automodel.components.datasets.preview import render_sample

# A special token repeated 4+ times in a row (an image's placeholder tokens): shown once with a count.
_RUN = re.compile(r"(<[^<>\s]{1,40}>)\1{3,}")


def render_vlm_batch(batch: dict[str, torch.Tensor], tokenizer: Any, *, color: bool = True) -> list[str]:
    """One rendering per row of a collated batch (``input_ids``, ``labels``, ``attention_mask``)."""
    texts = []
    for row in range(batch["input_ids"].shape[0]):
        length = int(batch["attention_mask"][row].sum())
        sample = {
            "input_ids": batch["input_ids"][row, :length].tolist(),
            "labels": batch["labels"][row, :length].tolist(),
        }
        text = render_sample(sample, tokenizer, color=color)
        texts.append(_RUN.sub(lambda m: f"{m.group(1)}x{len(m.group(0)) // len(m.group(1))}", text))
    return texts
