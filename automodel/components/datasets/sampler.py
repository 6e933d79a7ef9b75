"""A distributed sampler whose order is a pure function of (seed, epoch), so a run can resume mid-epoch exactly."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from automodel.components.datasets._errors import DatasetError

logger = logging.getLogger(__name__)


class ResumableSampler(Sampler[int]):
    """Shuffle (or not), shard by rank, and optionally skip the start of the current epoch.

    The order of epoch ``e`` is ``randperm(dataset_len)`` from a ``torch.Generator`` seeded with ``seed + e``. It is
    made divisible by ``num_replicas`` (``drop_last`` drops the tail, otherwise the start is repeated to pad), and
    rank ``r`` takes ``order[r::num_replicas]``. ``set_start(k)`` skips this rank's first ``k`` indices until the
    epoch changes: on resume the recipe calls ``set_epoch(e)`` then ``set_start(batches_consumed *
    local_batch_size)``. The epoch and the start are the only state.

    ``group_by_length`` (needs ``lengths`` and the per-rank ``batch_size``) cuts padding when not packing: the
    shuffled order is split into megabatches of ``batch_size x num_replicas x megabatch_mult`` samples, each sorted
    by length (longest first) and cut into global batches of ``batch_size x num_replicas``; the batch order is then
    shuffled, with the complete batch holding the longest sample first so an out-of-memory shows at the first step.
    Every rank's batch of a step thus holds similar lengths, and the order is still a pure function of (seed, epoch).
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
        lengths: Sequence[int] | None = None,
        group_by_length: bool = False,
        batch_size: int | None = None,
        megabatch_mult: int = 50,
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
        self.group_by_length = group_by_length
        self.batch_size = batch_size
        self.megabatch_mult = megabatch_mult
        self.lengths = _check_grouping(dataset_len, lengths, group_by_length, batch_size, megabatch_mult)
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

    def _rank_entries(self) -> list[tuple[int, bool]]:
        """This rank's (index, is_padding) pairs for the current epoch; padding repeats the start of the order."""
        generator = None
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.num_replicas
        if total <= len(order):
            entries = [(index, False) for index in order[:total]]
        else:
            # Pad by repeating the start of the order (several times if the dataset is tiny).
            repeats = -(-total // len(order))
            entries = [(index, position >= len(order)) for position, index in enumerate((order * repeats)[:total])]
        if self.group_by_length:
            entries = self._group_by_length(entries, generator)
        return entries[self.rank :: self.num_replicas]

    def _rank_order(self) -> list[int]:
        return [index for index, _ in self._rank_entries()]

    def padding_flags(self) -> list[bool]:
        """For each index this rank yields (after ``set_start``), whether it only pads the epoch to an equal share
        per rank: an evaluation must not count it (a sample seen twice would weigh twice)."""
        return [pad for _, pad in self._rank_entries()][self.start :]

    def _group_by_length(
        self, entries: list[tuple[int, bool]], generator: torch.Generator | None
    ) -> list[tuple[int, bool]]:
        assert self.lengths is not None and self.batch_size is not None
        # rank r reads entries[r::num_replicas], so a run of batch_size * num_replicas consecutive entries is exactly
        # the step's batches on all ranks: sort within megabatches, then move whole global batches around.
        global_batch = self.batch_size * self.num_replicas
        megabatch = global_batch * self.megabatch_mult
        batches: list[list[tuple[int, bool]]] = []
        for start in range(0, len(entries), megabatch):
            part = entries[start : start + megabatch]
            lengths = self.lengths[np.asarray([index for index, _ in part], dtype=np.int64)]
            part = [part[i] for i in np.argsort(-lengths, kind="stable").tolist()]
            batches.extend(part[k : k + global_batch] for k in range(0, len(part), global_batch))
        # Only the very last batch can be short; it stays last so every other batch is complete on every rank.
        tail = [batches.pop()] if len(batches[-1]) < global_batch else []
        if generator is not None and batches:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
            longest = max(range(len(batches)), key=lambda b: int(self.lengths[batches[b][0][0]]))
            batches.insert(0, batches.pop(longest))
        return [entry for batch in batches + tail for entry in batch]

    def __iter__(self) -> Iterator[int]:
        return iter(self._rank_order()[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


def _check_grouping(
    dataset_len: int,
    lengths: Sequence[int] | None,
    group_by_length: bool,
    batch_size: int | None,
    megabatch_mult: int,
) -> np.ndarray | None:
    """Validate the length-grouping options; return the lengths as an array (or None when unused)."""
    if not group_by_length:
        if lengths is not None:
            logger.warning("the sampler got sample lengths but group_by_length is false; they are not used")
        return None
    if lengths is None:
        raise DatasetError(
            "group_by_length needs the sample lengths (the dataset's .lengths); use a dataset that has them or set "
            "group_by_length: false"
        )
    array = np.asarray(lengths, dtype=np.int64)
    if array.shape != (dataset_len,):
        raise DatasetError(
            f"group_by_length got {array.size} sample lengths for a dataset of {dataset_len} samples; they must match"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(
            f"group_by_length needs the per-rank batch_size (a positive integer) to form batches, got {batch_size!r}"
        )
    if isinstance(megabatch_mult, bool) or not isinstance(megabatch_mult, int) or megabatch_mult < 1:
        raise DatasetError(f"megabatch_mult must be a positive integer, got {megabatch_mult!r}")
    return array
