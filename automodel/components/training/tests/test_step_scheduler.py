import logging

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset, Sampler

from automodel._shared.errors import UserError
from automodel.components.training import StepScheduler, TrainingError


class ResumableSampler(Sampler[int]):
    """Same duck-typed API as the datasets component's sampler: a shuffled order per epoch, and a start index."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.start = 0
        self.epochs_set: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.epochs_set.append(epoch)

    def set_start(self, index: int) -> None:
        self.start = index

    def __iter__(self):
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(order.tolist()[self.start :])

    def __len__(self) -> int:
        return self.num_samples


class PlainSampler(Sampler[int]):
    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __iter__(self):
        return iter(range(self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


def make_loader(num_samples: int = 22, batch_size: int = 2, sampler=None) -> DataLoader:
    sampler = sampler if sampler is not None else ResumableSampler(num_samples)
    return DataLoader(list(range(num_samples)), batch_size=batch_size, sampler=sampler)


def samples_of(group: list[torch.Tensor]) -> list[int]:
    return [int(x) for batch in group for x in batch]


# --- validation -----------------------------------------------------------------------------------------------


def test_batch_size_mismatch_names_every_number():
    with pytest.raises(
        TrainingError,
        match=r"global_batch_size\(32\) must be a multiple of local_batch_size\(4\) x "
        r"dp_size\(3\) = 12; set global_batch_size to e.g. 24 or 36",
    ):
        StepScheduler(32, 4, dp_size=3)


def test_training_error_is_a_user_error():
    assert issubclass(TrainingError, UserError)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"global_batch_size": 0, "local_batch_size": 1},
            r"step_scheduler.global_batch_size must be a positive integer, got 0",
        ),
        (
            {"global_batch_size": 4, "local_batch_size": 2.0},
            r"step_scheduler.local_batch_size must be a positive integer, got 2.0",
        ),
        (
            {"global_batch_size": 4, "local_batch_size": 2, "max_steps": True},
            r"max_steps must be a positive integer or null, got True",
        ),
        ({"global_batch_size": 4, "local_batch_size": 2, "ckpt_every_steps": -5}, r"ckpt_every_steps must be"),
        (
            {"global_batch_size": 4, "local_batch_size": 2, "max_steps": None, "num_epochs": None},
            r"set max_steps or num_epochs",
        ),
    ],
)
def test_invalid_settings(kwargs, message):
    with pytest.raises(TrainingError, match=message):
        StepScheduler(**kwargs)


def test_check_settings_reports_every_problem_at_once():
    problems = StepScheduler.check_settings(
        -1, True, max_steps=0, num_epochs=float("nan"), val_every_steps=-3, ckpt_every_steps=2
    )
    assert problems == [
        "step_scheduler.global_batch_size must be a positive integer, got -1",
        "step_scheduler.local_batch_size must be a positive integer, got True",
        "step_scheduler.max_steps must be a positive integer or null, got 0",
        "step_scheduler.num_epochs must be a positive integer or null, got nan",
        "step_scheduler.val_every_steps must be a positive integer or null, got -3",
    ]
    assert StepScheduler.check_settings(8, 2, max_steps=None, num_epochs=None) == [
        "step_scheduler: set max_steps or num_epochs (both are null, so training would never stop)"
    ]
    assert StepScheduler.check_settings(8, 2, max_steps=10) == []


def test_dataloader_smaller_than_one_step_is_an_error():
    with pytest.raises(
        TrainingError, match=r"yields 3 micro-batches per epoch, fewer than the 4 one optimizer step needs"
    ):
        StepScheduler(8, 2, dataloader=make_loader(num_samples=6))


def test_iterating_without_dataloader_is_an_error():
    with pytest.raises(TrainingError, match="pass dataloader="):
        list(StepScheduler(4, 2))


# --- grouping, epochs, cadence --------------------------------------------------------------------------------


def test_groups_epochs_and_dropped_tail():
    loader = make_loader(num_samples=22, batch_size=2)  # 11 micro-batches per epoch
    scheduler = StepScheduler(12, 2, dp_size=2, num_epochs=2, dataloader=loader)  # grad_acc_steps = 3
    assert scheduler.grad_acc_steps == 3
    assert scheduler.steps_per_epoch == 3
    assert scheduler.total_steps == 6

    seen = []
    for group in scheduler:
        assert len(group) == 3 and all(batch.shape == (2,) for batch in group)
        seen.append((scheduler.step, scheduler.epoch, scheduler.batches_in_epoch, samples_of(group)))
    assert [(s, e, b) for s, e, b, _ in seen] == [(1, 0, 3), (2, 0, 6), (3, 0, 9), (4, 1, 3), (5, 1, 6), (6, 1, 9)]
    # each epoch is a fresh shuffle: 18 distinct samples, in a different order than the previous epoch
    epoch0 = [x for s, e, _, xs in seen if e == 0 for x in xs]
    epoch1 = [x for s, e, _, xs in seen if e == 1 for x in xs]
    assert len(set(epoch0)) == 18 and len(set(epoch1)) == 18 and epoch0 != epoch1
    assert loader.sampler.epochs_set == [0, 1]
    assert scheduler.num_dropped_batches == 4  # 2 trailing micro-batches per epoch
    assert scheduler.step == 6 and scheduler.epoch == 1  # epoch stays on the last epoch trained
    assert list(scheduler) == []  # finished: iterating again yields nothing


def test_max_steps_stops_mid_epoch_and_crosses_epochs():
    scheduler = StepScheduler(4, 2, max_steps=5, num_epochs=None, dataloader=make_loader(num_samples=16))
    assert scheduler.total_steps == 5
    steps = [(scheduler.step, scheduler.epoch) for _ in scheduler]
    assert steps == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 1)]


def test_total_steps_is_the_smaller_of_max_steps_and_epochs():
    loader = make_loader(num_samples=16)  # 8 micro-batches -> 4 steps per epoch
    assert StepScheduler(4, 2, max_steps=100, num_epochs=2, dataloader=loader).total_steps == 8
    assert StepScheduler(4, 2, max_steps=3, num_epochs=2, dataloader=loader).total_steps == 3


def test_val_ckpt_and_last_step_cadence():
    scheduler = StepScheduler(2, 2, num_epochs=1, val_every_steps=2, ckpt_every_steps=4, dataloader=make_loader(12))
    flags = [(scheduler.step, scheduler.is_val_step, scheduler.is_ckpt_step, scheduler.is_last_step) for _ in scheduler]
    assert [s for s, val, _, _ in flags if val] == [2, 4, 6]
    assert [s for s, _, ckpt, _ in flags if ckpt] == [4, 6]  # 6 is the last step, always a checkpoint step
    assert [s for s, _, _, last in flags if last] == [6]


def test_iterable_dataset_without_length(caplog):
    class Stream(IterableDataset):
        def __iter__(self):
            return iter(range(10))

    with caplog.at_level(logging.WARNING):
        scheduler = StepScheduler(4, 2, num_epochs=1, dataloader=DataLoader(Stream(), batch_size=2))
    assert "set max_steps" in caplog.text
    with pytest.raises(TrainingError, match="total number of steps is unknown"):
        _ = scheduler.total_steps
    assert [scheduler.is_last_step for _ in scheduler] == [False, False]

    bounded = StepScheduler(4, 2, max_steps=3, num_epochs=None, dataloader=DataLoader(Stream(), batch_size=2))
    assert bounded.total_steps == 3
    assert [bounded.is_last_step for _ in bounded] == [False, False, True]


# --- resume ---------------------------------------------------------------------------------------------------


def run_all(num_epochs: int = 2) -> list[list[int]]:
    scheduler = StepScheduler(6, 2, num_epochs=num_epochs, dataloader=make_loader(num_samples=22))
    return [samples_of(group) for group in scheduler]


@pytest.mark.parametrize("stop_after", [2, 3, 4, 6])  # mid-epoch, last step of epoch 0, mid epoch 1, very last
def test_resume_continues_exactly_where_it_stopped(stop_after):
    uninterrupted = run_all()

    first = StepScheduler(6, 2, num_epochs=2, dataloader=make_loader(num_samples=22))
    before = []
    for group in first:
        before.append(samples_of(group))
        if first.step == stop_after:
            saved = first.state_dict()
            break
    assert set(saved) == {"step", "epoch", "batches_in_epoch"}

    resumed = StepScheduler(6, 2, num_epochs=2, dataloader=make_loader(num_samples=22))
    resumed.load_state_dict(saved)
    after = [samples_of(group) for group in resumed]
    assert before + after == uninterrupted
    assert resumed.step == 6


def test_resume_without_set_start_restarts_the_epoch(caplog):
    loader = make_loader(num_samples=12, sampler=PlainSampler(12))
    scheduler = StepScheduler(4, 2, num_epochs=1, dataloader=loader)
    scheduler.load_state_dict({"step": 1, "epoch": 0, "batches_in_epoch": 2})
    with caplog.at_level(logging.WARNING):
        groups = [samples_of(group) for group in scheduler]
    assert "no set_start()" in caplog.text
    assert groups[0] == [0, 1, 2, 3]  # the epoch restarted from its first sample
    assert scheduler.step == 4  # 1 resumed + 3 steps of the restarted epoch


def test_load_state_dict_rejects_an_incomplete_state():
    with pytest.raises(TrainingError, match=r"lacks \['batches_in_epoch'\]"):
        StepScheduler(4, 2).load_state_dict({"step": 1, "epoch": 0})
