"""The tokenized dataset every LLM format produces: shifted ``input_ids`` / ``labels`` pairs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch.utils.data import Dataset


class SFTDataset(Dataset):
    """A map-style dataset of ``{"input_ids": list[int], "labels": list[int]}`` (labels already shifted).

    Samples are stored as two flat int32 arrays plus offsets, which keeps ~100k samples in a few MB of memory.
    ``lengths[i]`` is ``len(self[i]["input_ids"])``, for length-grouped batching.
    """

    def __init__(self, input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]]) -> None:
        assert len(input_ids) == len(labels), "one labels sequence per input_ids sequence"
        lengths = [len(ids) for ids in input_ids]
        assert lengths == [len(lab) for lab in labels], "input_ids and labels must have equal lengths"
        self.lengths: list[int] = lengths
        self._offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        empty = np.zeros(0, dtype=np.int32)
        self._input_ids = np.concatenate([np.asarray(x, dtype=np.int32) for x in input_ids] or [empty])
        self._labels = np.concatenate([np.asarray(x, dtype=np.int32) for x in labels] or [empty])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)} samples")
        start, end = self._offsets[index], self._offsets[index + 1]
        return {"input_ids": self._input_ids[start:end].tolist(), "labels": self._labels[start:end].tolist()}
