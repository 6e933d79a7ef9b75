"""Collate functions: turn a list of samples into padded LongTensors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from automodel.components.datasets._errors import DatasetError

# Keys the collater builds itself; any other per-token key is padded with this value.
_EXTRA_KEY_PAD = 0


def default_collater(
    batch: Sequence[dict[str, Any]], pad_token_id: int | None = 0, pad_seq_len_divisible: int | None = None
) -> dict[str, Any]:
    """Pad a batch of ``{"input_ids", "labels"}`` samples to the longest one.

    The length is rounded up to a multiple of ``pad_seq_len_divisible`` (helps kernels and fp8 that want aligned
    shapes). ``input_ids`` is padded with ``pad_token_id``, ``labels`` with -100, and ``attention_mask`` (1 = real
    token) is built. Extra keys whose values are lists as long as ``input_ids`` (e.g. ``position_ids``) are padded
    with 0; any other extra key is passed through as a plain list.
    """
    if not batch:
        raise DatasetError("default_collater got an empty batch; check the dataset and the sampler length")
    if pad_seq_len_divisible is not None and (not isinstance(pad_seq_len_divisible, int) or pad_seq_len_divisible < 1):
        raise DatasetError(
            f"pad_seq_len_divisible must be a positive integer or null, got {pad_seq_len_divisible!r}; fix the "
            "collate_fn settings of the dataloader"
        )
    pad_token_id = 0 if pad_token_id is None else pad_token_id

    lengths = []
    for i, sample in enumerate(batch):
        if "input_ids" not in sample or "labels" not in sample:
            raise DatasetError(
                f"sample {i} of the batch has keys {sorted(sample)}; every sample needs 'input_ids' and 'labels'"
            )
        if len(sample["input_ids"]) != len(sample["labels"]):
            raise DatasetError(
                f"sample {i} of the batch has {len(sample['input_ids'])} input_ids but {len(sample['labels'])} "
                "labels; they must have equal length (labels are already shifted)"
            )
        lengths.append(len(sample["input_ids"]))

    seq_len = max(lengths)
    if pad_seq_len_divisible:
        seq_len = -(-seq_len // pad_seq_len_divisible) * pad_seq_len_divisible

    def pad(key: str, value: int) -> torch.Tensor:
        out = torch.full((len(batch), seq_len), value, dtype=torch.long)
        for row, sample in enumerate(batch):
            seq = sample[key]
            if len(seq):
                out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        return out

    result: dict[str, Any] = {
        "input_ids": pad("input_ids", pad_token_id),
        "labels": pad("labels", -100),
    }
    attention_mask = torch.zeros((len(batch), seq_len), dtype=torch.long)
    for row, n in enumerate(lengths):
        attention_mask[row, :n] = 1
    result["attention_mask"] = attention_mask

    extra_keys = [k for k in batch[0] if k not in ("input_ids", "labels", "attention_mask")]
    for key in extra_keys:
        values = [sample.get(key) for sample in batch]
        per_token = all(
            isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n for v, n in zip(values, lengths, strict=True)
        )
        result[key] = pad(key, _EXTRA_KEY_PAD) if per_token else values
    return result
