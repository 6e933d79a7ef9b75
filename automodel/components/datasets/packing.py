"""Sequence packing: several samples per row, with no attention or loss across document boundaries.

A packed row concatenates whole samples. Because labels are already shifted per sample (``labels[t]`` is the token
after ``input_ids[t]`` *within its document*, or -100), concatenating them never asks a token to predict the first
token of the next document. ``position_ids`` restart at 0 for each document; with no ``attention_mask`` and no KV
cache, transformers (5.x ``masking_utils.find_packed_sequence_indices``) turns those restarts into a block-diagonal
causal mask for sdpa and eager attention. Flash-attention only infers that from ``position_ids`` when the batch has
one row, so ``packed_collater(..., flash_varlen=True)`` passes the ``cu_seq_lens`` it needs explicitly.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch.utils.data import Dataset

from automodel.components.datasets._errors import DatasetError

logger = logging.getLogger(__name__)

PackOnOverflow = Literal["truncate", "drop"]
PACK_ON_OVERFLOW_CHOICES: tuple[str, ...] = get_args(PackOnOverflow)


class PackedDataset(Dataset):
    """Rows of whole samples of a base dataset, each at most ``packed_sequence_size`` tokens; see ``pack_dataset``.

    ``self[i]`` is ``{"input_ids", "labels", "position_ids", "seq_lens"}``: the row's documents concatenated, positions
    restarting at 0 per document, and the document lengths. Rows are read lazily from the base dataset, so packing
    costs a few integers per sample. ``lengths[i]`` is the token count of row ``i``.
    """

    def __init__(
        self,
        dataset: Any,
        packed_sequence_size: int,
        row_offsets: np.ndarray,
        doc_indices: np.ndarray,
        doc_lengths: np.ndarray,
    ) -> None:
        assert len(row_offsets) >= 1 and row_offsets[-1] == len(doc_indices) == len(doc_lengths)
        self.dataset = dataset
        self.packed_sequence_size = packed_sequence_size
        self._row_offsets = row_offsets
        self._doc_indices = doc_indices
        self._doc_lengths = doc_lengths
        self.lengths: list[int] = np.add.reduceat(doc_lengths, row_offsets[:-1]).tolist() if len(doc_lengths) else []

    def __len__(self) -> int:
        return len(self._row_offsets) - 1

    def row_samples(self, index: int) -> list[int]:
        """The base-dataset indices packed into row ``index``, in row order."""
        return self._doc_indices[self._row_offsets[index] : self._row_offsets[index + 1]].tolist()

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row index {index} out of range for a packed dataset of {len(self)} rows")
        start, end = self._row_offsets[index], self._row_offsets[index + 1]
        input_ids: list[int] = []
        labels: list[int] = []
        position_ids: list[int] = []
        seq_lens: list[int] = []
        for sample_index, length in zip(self._doc_indices[start:end].tolist(), self._doc_lengths[start:end].tolist()):
            sample = self.dataset[sample_index]
            input_ids.extend(sample["input_ids"][:length])
            labels.extend(sample["labels"][:length])
            position_ids.extend(range(length))
            seq_lens.append(length)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "seq_lens": seq_lens}


@dataclass
class PackedSequenceConfig:
    """`packed_sequence:` -- several samples per row of `packed_sequence_size` tokens (0 turns packing off).

    `split_across_pack` is accepted for reference-system configs; samples are never split across rows here, so only
    `false` is valid.
    """

    packed_sequence_size: int = 0
    on_overflow: PackOnOverflow = "truncate"
    split_across_pack: bool = False

    def __post_init__(self) -> None:
        if self.split_across_pack:
            raise DatasetError(
                "packed_sequence.split_across_pack: true is not supported (a sample is never split across rows, so "
                "no token attends to part of its document); set it to false"
            )
        if self.packed_sequence_size and (
            isinstance(self.packed_sequence_size, bool)
            or not isinstance(self.packed_sequence_size, int)
            or self.packed_sequence_size < 2
        ):
            raise DatasetError(
                f"packed_sequence.packed_sequence_size must be an integer >= 2 (tokens per packed row), or 0 to turn "
                f"packing off; got {self.packed_sequence_size!r}"
            )

    @property
    def enabled(self) -> bool:
        return bool(self.packed_sequence_size)


def pack_dataset(
    dataset: Any,
    packed_sequence_size: int,
    *,
    seed: int = 0,
    on_overflow: PackOnOverflow = "truncate",
) -> PackedDataset:
    """Pack the samples of ``dataset`` into rows of at most ``packed_sequence_size`` tokens, never splitting a sample.

    Best-fit decreasing bin packing: samples are taken longest first (ties in a seeded random order) and each goes to
    the open row with the least room that still fits it. Rows then follow the dataset order (ordered by their
    earliest sample), so an unshuffled run still sees the data roughly in order rather than longest first. The rows
    are a pure function of (sample lengths, seed), so a resumed run sees the same rows. A sample longer than a row
    is cut to its first ``packed_sequence_size`` tokens (``on_overflow: truncate``; labels are per-token so a cut
    sample is still a valid one) or left out (``drop``); a sample with no supervised token left after the cut is
    left out too. Logs one line with the counts
    and the packing efficiency (real tokens / row capacity).
    """
    if isinstance(packed_sequence_size, bool) or not isinstance(packed_sequence_size, int) or packed_sequence_size < 2:
        raise DatasetError(
            f"packed_sequence.packed_sequence_size must be an integer >= 2 (tokens per packed row), or 0 to turn "
            f"packing off; got {packed_sequence_size!r}"
        )
    if on_overflow not in PACK_ON_OVERFLOW_CHOICES:
        raise DatasetError(
            f"packed_sequence.on_overflow must be one of {list(PACK_ON_OVERFLOW_CHOICES)}, got {on_overflow!r}"
        )
    if len(dataset) == 0:
        raise DatasetError("cannot pack an empty dataset; check the dataset section (split, path, filters)")

    lengths = _sample_lengths(dataset)
    size = packed_sequence_size
    keep_lengths = np.minimum(lengths, size)
    too_long = lengths > size
    dropped = lengths == 0
    if on_overflow == "drop":
        dropped |= too_long
    else:
        # A cut sample whose supervised tokens all lie past the cut would only add tokens without loss.
        for index in np.flatnonzero(too_long).tolist():
            if all(label == -100 for label in dataset[index]["labels"][:size]):
                dropped[index] = True
    num_truncated = int((too_long & ~dropped).sum())
    num_dropped = int(dropped.sum())
    candidates = np.flatnonzero(~dropped)
    if len(candidates) == 0:
        raise DatasetError(
            f"all {len(lengths)} samples were left out of packing (longer than packed_sequence_size={size} with "
            f"on_overflow={on_overflow!r}, or empty); raise packed_sequence_size or use on_overflow: truncate"
        )

    # Seeded shuffle, then a stable sort by length: equal-length samples land in random (but fixed) rows.
    generator = torch.Generator().manual_seed(seed)
    candidates = candidates[torch.randperm(len(candidates), generator=generator).numpy()]
    candidates = candidates[np.argsort(-keep_lengths[candidates], kind="stable")]
    rows = _best_fit(candidates.tolist(), keep_lengths.tolist(), size)
    # Best-fit fills rows longest sample first; emitted in that order, an unshuffled run would see the longest
    # samples first and the shortest last (a length curriculum nobody asked for). Rows follow the dataset order
    # instead: each row's documents in index order, rows ordered by their first document.
    rows = sorted((sorted(row) for row in rows), key=lambda row: row[0])

    row_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(row) for row in rows], out=row_offsets[1:])
    doc_indices = np.fromiter((i for row in rows for i in row), dtype=np.int64, count=int(row_offsets[-1]))
    doc_lengths = keep_lengths[doc_indices]
    packed = PackedDataset(dataset, size, row_offsets, doc_indices, doc_lengths)

    num_tokens = int(doc_lengths.sum())
    level = logging.WARNING if num_truncated or num_dropped else logging.INFO
    logger.log(
        level,
        "packed %d samples into %d rows of %d tokens: efficiency %.1f%% (%d truncated, %d dropped: longer than "
        "packed_sequence_size or empty)",
        len(doc_indices),
        len(rows),
        size,
        100.0 * num_tokens / (len(rows) * size),
        num_truncated,
        num_dropped,
    )
    return packed


def _sample_lengths(dataset: Any) -> np.ndarray:
    """Token count of every sample: ``dataset.lengths`` when the dataset has it, else read every sample once."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is None:
        lengths = []
        for index in range(len(dataset)):
            sample = dataset[index]
            if "input_ids" not in sample or "labels" not in sample:
                raise DatasetError(f"sample {index} has keys {sorted(sample)}; packing needs 'input_ids' and 'labels'")
            if len(sample["input_ids"]) != len(sample["labels"]):
                raise DatasetError(
                    f"sample {index} has {len(sample['input_ids'])} input_ids but {len(sample['labels'])} labels; "
                    "they must have equal length (labels are already shifted)"
                )
            lengths.append(len(sample["input_ids"]))
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.shape != (len(dataset),):
        raise DatasetError(f"dataset.lengths has {lengths.size} entries for {len(dataset)} samples; they must match")
    return lengths


def _best_fit(order: list[int], lengths: list[int], size: int) -> list[list[int]]:
    """Place samples (in ``order``) into rows of capacity ``size``: each into the fitting row with the least room.

    Rows are bucketed by remaining room; ``rooms`` is the sorted list of rooms that have a row, so finding the tightest
    fit is one bisect (O(n log size) overall instead of scanning every open row).
    """
    rows: list[list[int]] = []
    buckets: dict[int, list[int]] = {}  # room -> ids of rows with exactly that room left
    rooms: list[int] = []

    def put(row_id: int, room: int) -> None:
        if room == 0:
            return  # full: never a candidate again
        bucket = buckets.setdefault(room, [])
        if not bucket:
            bisect.insort(rooms, room)
        bucket.append(row_id)

    for index in order:
        length = lengths[index]
        slot = bisect.bisect_left(rooms, length)
        if slot == len(rooms):
            rows.append([index])
            put(len(rows) - 1, size - length)
            continue
        room = rooms[slot]
        bucket = buckets[room]
        row_id = bucket.pop()
        if not bucket:
            del rooms[slot]
        rows[row_id].append(index)
        put(row_id, room - length)
    return rows


def packed_collater(
    batch: Sequence[dict[str, Any]],
    pad_token_id: int | None = 0,
    pad_seq_len_divisible: int | None = None,
    pad_to: int | None = None,
    flash_varlen: bool = False,
) -> dict[str, Any]:
    """Pad packed rows (from ``PackedDataset``) into a batch for the model, with **no** ``attention_mask``.

    Rows are padded to the longest row (rounded up to a multiple of ``pad_seq_len_divisible``), or to ``pad_to`` (e.g.
    the packed_sequence_size: one static shape for torch.compile). Returns LongTensors ``input_ids`` (padded with
    ``pad_token_id``), ``labels`` (-100), ``position_ids`` (the padding counts 0, 1, ... as a document of its own, so
    it never joins the last real document), and ``_token_mask`` (bool, True on real tokens): a metadata key that is
    not a model input (the recipe drops keys starting with "_" before the forward and counts tokens/s with it).

    ``flash_varlen`` adds ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (int32 document boundaries over the flattened
    batch, padding runs included as documents) and ``max_length_q`` / ``max_length_k`` (Python ints): transformers'
    flash-attention reads those, and otherwise infers documents from ``position_ids`` only for a batch of one row.
    """
    if not batch:
        raise DatasetError("packed_collater got an empty batch; check the dataset and the sampler length")
    if pad_seq_len_divisible is not None and (not isinstance(pad_seq_len_divisible, int) or pad_seq_len_divisible < 1):
        raise DatasetError(
            f"pad_seq_len_divisible must be a positive integer or null, got {pad_seq_len_divisible!r}; fix the "
            "collate_fn settings of the dataloader"
        )
    pad_token_id = 0 if pad_token_id is None else pad_token_id

    rows_seq_lens = []
    for i, row in enumerate(batch):
        missing = [key for key in ("input_ids", "labels", "position_ids") if key not in row]
        if missing:
            raise DatasetError(
                f"row {i} of the batch has keys {sorted(row)} but lacks {missing}; packed_collater takes rows of a "
                "packed dataset (pack_dataset), use default_collater for unpacked samples"
            )
        n = len(row["input_ids"])
        if len(row["labels"]) != n or len(row["position_ids"]) != n:
            raise DatasetError(
                f"row {i} of the batch has {n} input_ids, {len(row['labels'])} labels and "
                f"{len(row['position_ids'])} position_ids; they must have equal length"
            )
        seq_lens = list(row["seq_lens"]) if "seq_lens" in row else _seq_lens_from_positions(row["position_ids"])
        assert sum(seq_lens) == n, f"row {i}: seq_lens {seq_lens} do not add up to its {n} tokens"
        rows_seq_lens.append(seq_lens)

    longest = max(len(row["input_ids"]) for row in batch)
    seq_len = longest
    if pad_to is not None:
        if longest > pad_to:
            raise DatasetError(
                f"a packed row has {longest} tokens but the collater pads to pad_to={pad_to}; set pad_to to the "
                "packed_sequence_size (or null to pad to the longest row)"
            )
        seq_len = pad_to
    if pad_seq_len_divisible:
        seq_len = -(-seq_len // pad_seq_len_divisible) * pad_seq_len_divisible

    num_rows = len(batch)
    input_ids = torch.full((num_rows, seq_len), pad_token_id, dtype=torch.long)
    labels = torch.full((num_rows, seq_len), -100, dtype=torch.long)
    # The padding restarts at 0, so it forms its own block: no real token attends to it or is merged with it.
    position_ids = torch.arange(seq_len, dtype=torch.long).repeat(num_rows, 1)
    token_mask = torch.zeros((num_rows, seq_len), dtype=torch.bool)
    for r, row in enumerate(batch):
        n = len(row["input_ids"])
        if n:
            input_ids[r, :n] = torch.as_tensor(row["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.as_tensor(row["labels"], dtype=torch.long)
            position_ids[r, :n] = torch.as_tensor(row["position_ids"], dtype=torch.long)
            position_ids[r, n:] -= n
            token_mask[r, :n] = True

    result: dict[str, Any] = {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "_token_mask": token_mask,
    }
    if flash_varlen:
        doc_lens = []
        for r, row in enumerate(batch):
            doc_lens.extend(length for length in rows_seq_lens[r] if length)
            if seq_len > len(row["input_ids"]):
                doc_lens.append(seq_len - len(row["input_ids"]))
        cu_seq_lens = torch.tensor([0, *itertools.accumulate(doc_lens)], dtype=torch.int32)
        result["cu_seq_lens_q"] = cu_seq_lens
        result["cu_seq_lens_k"] = cu_seq_lens.clone()
        result["max_length_q"] = result["max_length_k"] = max(doc_lens)
    return result


def _seq_lens_from_positions(position_ids: Sequence[int]) -> list[int]:
    """Document lengths of a row whose positions restart at 0 for each document."""
    starts = [t for t, position in enumerate(position_ids) if position == 0 or t == 0]
    return [end - start for start, end in zip(starts, starts[1:] + [len(position_ids)])]
