"""A distributed sampler whose order is a pure function of (seed, epoch), so a run can resume mid-epoch exactly."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from automodel.components.datasets._errors import DatasetError


class ResumableSampler(Sampler[int]):
    """Shuffle (or not), shard by rank, and optionally skip the start of the current epoch.

    The order of epoch ``e`` is ``randperm(dataset_len)`` from a ``torch.Generator`` seeded with ``seed + e``. It is
    made divisible by ``num_replicas`` (``drop_last`` drops the tail, otherwise the start is repeated to pad), and
    rank ``r`` takes ``order[r::num_replicas]``. ``set_start(k)`` skips this rank's first ``k`` indices until the
    epoch changes: on resume the recipe calls ``set_epoch(e)`` then ``set_start(batches_consumed *
    local_batch_size)``. The epoch and the start are the only state.
    """

    def __init__(
        self,
        dataset_len: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = True,
    ) -> None:
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise DatasetError(f"num_replicas must be a positive integer, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise DatasetError(f"rank must be in [0, num_replicas={num_replicas}), got {rank!r}")
        if not isinstance(dataset_len, int) or dataset_len < 1:
            raise DatasetError(f"the dataset is empty (dataset_len={dataset_len!r}); there is nothing to sample")
        if drop_last and dataset_len < num_replicas:
            raise DatasetError(
                f"the dataset has {dataset_len} samples but there are {num_replicas} data-parallel ranks, so "
                "drop_last leaves none per rank; use more data or fewer ranks"
            )
        self.dataset_len = dataset_len
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        if drop_last:
            self.num_samples = dataset_len // num_replicas  # per rank
        else:
            self.num_samples = -(-dataset_len // num_replicas)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order to produce; moving to another epoch clears ``set_start``."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def set_start(self, index: int) -> None:
        """Skip the first ``index`` indices of this rank's order for the current epoch (used on resume)."""
        if not isinstance(index, int) or not 0 <= index <= self.num_samples:
            raise DatasetError(
                f"cannot resume at sample {index!r} of an epoch that has {self.num_samples} samples on this rank; "
                "the checkpoint does not match this dataset or data-parallel size"
            )
        self.start = index

    def _rank_order(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.num_replicas
        if total <= len(order):
            order = order[:total]
        else:
            # Pad by repeating the start of the order (several times if the dataset is tiny).
            repeats = -(-total // len(order))
            order = (order * repeats)[:total]
        return order[self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_order()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start
