import pytest

from automodel.components.datasets import DatasetError, ResumableSampler


def test_order_is_a_pure_function_of_seed_and_epoch():
    a, b = ResumableSampler(50, seed=3), ResumableSampler(50, seed=3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(50))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(ResumableSampler(50, seed=4)) != first


def test_no_shuffle_is_in_order():
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_ranks_are_disjoint_and_cover_everything_when_divisible():
    shards = [list(ResumableSampler(12, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert sorted(shards[0] + shards[1] + shards[2]) == list(range(12))
    full = list(ResumableSampler(12, seed=1))
    assert shards[1] == full[1::3]


def test_drop_last_drops_the_tail_and_padding_repeats_the_start():
    dropped = [ResumableSampler(11, seed=0, num_replicas=2, rank=r) for r in range(2)]
    assert [len(s) for s in dropped] == [5, 5]
    assert len(set(dropped[0]) | set(dropped[1])) == 10

    full = list(ResumableSampler(11, seed=0))
    padded = [list(ResumableSampler(11, seed=0, num_replicas=2, rank=r, drop_last=False)) for r in range(2)]
    assert [len(s) for s in padded] == [6, 6]
    assert padded[1][-1] == full[0]  # the 12th slot repeats the first index
    assert set(padded[0]) | set(padded[1]) == set(range(11))


def test_set_start_gives_the_tail_of_the_full_order_for_this_epoch_only():
    sampler = ResumableSampler(20, seed=7, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(4)
    assert len(sampler) == 6
    assert list(sampler) == full[4:]
    sampler.set_epoch(2)  # same epoch: still resuming
    assert list(sampler) == full[4:]
    sampler.set_epoch(3)
    assert len(sampler) == 10


def test_set_start_past_the_epoch_is_an_error():
    sampler = ResumableSampler(10, num_replicas=2)
    with pytest.raises(DatasetError, match="cannot resume at sample 6 of an epoch that has 5 samples"):
        sampler.set_start(6)


def test_more_ranks_than_samples_with_drop_last_is_an_error():
    with pytest.raises(DatasetError, match="3 samples but there are 4 data-parallel ranks"):
        ResumableSampler(3, num_replicas=4, rank=0)


def test_padding_flags_mark_the_repeated_samples_on_every_rank():
    # 7 samples on 2 ranks: rank 1's last index repeats sample 0 only to even out the shares; an evaluation must not
    # count it. The flags follow the order through shuffling, grouping by length and set_start.
    ranks = [ResumableSampler(7, shuffle=False, num_replicas=2, rank=r, drop_last=False) for r in range(2)]
    assert [list(s) for s in ranks] == [[0, 2, 4, 6], [1, 3, 5, 0]]
    assert [s.padding_flags() for s in ranks] == [[False] * 4, [False, False, False, True]]
    for kwargs in ({"shuffle": True, "seed": 3}, {"shuffle": True, "group_by_length": True, "batch_size": 2}):
        lengths = [5, 9, 1, 7, 3, 8, 2]
        samplers = [
            ResumableSampler(7, num_replicas=3, rank=r, drop_last=False, lengths=lengths, **kwargs) for r in range(3)
        ]
        real = [i for s in samplers for i, pad in zip(s, s.padding_flags(), strict=True) if not pad]
        assert sorted(real) == list(range(7))  # every sample counted exactly once
        assert sum(pad for s in samplers for pad in s.padding_flags()) == 2
    sampler = ResumableSampler(7, shuffle=False, num_replicas=2, rank=1, drop_last=False)
    sampler.set_start(2)
    assert list(sampler) == [5, 0] and sampler.padding_flags() == [False, True]
