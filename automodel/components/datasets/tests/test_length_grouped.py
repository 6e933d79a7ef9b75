import numpy as np
import pytest

from automodel.components.datasets import DatasetError, ResumableSampler


def chat_like_lengths(n: int = 2000, seed: int = 0) -> list[int]:
    """Long-tailed lengths like instruction data: median ~150 tokens, a few over 1,000."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(mean=5.0, sigma=0.8, size=n), 8, 2048).astype(int).tolist()


def batches_of(sampler: ResumableSampler, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


def padding_fraction(batches: list[list[int]], lengths: list[int]) -> float:
    padded = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / padded


def grouped(lengths, batch_size=8, **kwargs) -> ResumableSampler:
    return ResumableSampler(len(lengths), lengths=lengths, group_by_length=True, batch_size=batch_size, **kwargs)


def test_grouping_cuts_padding_against_a_plain_shuffle():
    lengths = chat_like_lengths()
    seen = []
    for rank in range(2):
        plain = ResumableSampler(len(lengths), seed=1, num_replicas=2, rank=rank)
        group = grouped(lengths, seed=1, num_replicas=2, rank=rank)
        plain_fraction = padding_fraction(batches_of(plain, 8), lengths)
        group_fraction = padding_fraction(batches_of(group, 8), lengths)
        assert plain_fraction > 0.5  # ~60% of a plain-shuffled batch is padding on these lengths
        assert group_fraction < 0.15  # ~9%: what is left is mostly in the long tail
        seen += list(group)
    assert sorted(seen) == list(range(len(lengths)))  # the same samples, only in another order


def test_each_step_holds_similar_lengths_on_every_rank():
    # The ranks' batches of one step come from one length-sorted run: padded to one shared length (what a step's
    # slowest rank costs), a step wastes little.
    lengths = chat_like_lengths(960)
    shards = [batches_of(grouped(lengths, batch_size=4, seed=2, num_replicas=3, rank=r), 4) for r in range(3)]
    steps = [[i for batch in step_batches for i in batch] for step_batches in zip(*shards)]
    assert len(steps) == 80
    assert padding_fraction(steps, lengths) < 0.15


def test_the_longest_batch_comes_first():
    lengths = chat_like_lengths(500)
    batches = batches_of(grouped(lengths, seed=4), 8)
    assert lengths.index(max(lengths)) in batches[0]


def test_grouped_order_is_a_pure_function_of_seed_and_epoch():
    lengths = chat_like_lengths(400)
    a, b = grouped(lengths, seed=3), grouped(lengths, seed=3)
    first = list(a)
    assert first == list(b)
    assert sorted(first) == list(range(400))
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    assert list(grouped(lengths, seed=4)) != first
    # Another megabatch size groups differently.
    assert list(grouped(lengths, seed=3, megabatch_mult=5)) != first


def test_ranks_are_disjoint_and_cover_everything():
    lengths = chat_like_lengths(600)
    shards = [list(grouped(lengths, seed=5, num_replicas=3, rank=r)) for r in range(3)]
    assert all(len(s) == 200 for s in shards)
    assert sorted(shards[0] + shards[1] + shards[2]) == list(range(600))


def test_a_short_last_batch_stays_last_and_drop_last_padding_still_works():
    lengths = chat_like_lengths(101)
    shards = [grouped(lengths, seed=0, num_replicas=2, rank=r, drop_last=False) for r in range(2)]
    assert [len(s) for s in shards] == [51, 51]
    assert set(shards[0]) | set(shards[1]) == set(range(101))
    # 102 slots = 6 global batches of 16 + a short one of 6: every full batch is complete on both ranks.
    for shard in shards:
        batches = batches_of(shard, 8)
        assert [len(b) for b in batches] == [8] * 6 + [3]


def test_set_start_resumes_at_the_exact_tail():
    lengths = chat_like_lengths(300)
    sampler = grouped(lengths, seed=7, num_replicas=2, rank=1)
    sampler.set_epoch(2)
    full = list(sampler)
    sampler.set_start(40)
    assert len(sampler) == 110
    assert list(sampler) == full[40:]
    resumed = grouped(lengths, seed=7, num_replicas=2, rank=1)  # a fresh process after a restart
    resumed.set_epoch(2)
    resumed.set_start(40)
    assert list(resumed) == full[40:]


def test_without_shuffle_megabatches_are_sorted_longest_first():
    lengths = [3, 9, 1, 7, 5, 2, 8, 6]
    sampler = grouped(lengths, batch_size=2, megabatch_mult=2, shuffle=False)
    assert list(sampler) == [1, 3, 0, 2, 6, 7, 4, 5]  # megabatches [0..3] and [4..7], each sorted


def test_grouping_option_errors():
    with pytest.raises(DatasetError, match=r"group_by_length needs the sample lengths \(the dataset's .lengths\)"):
        ResumableSampler(10, group_by_length=True, batch_size=2)
    with pytest.raises(DatasetError, match="group_by_length got 3 sample lengths for a dataset of 10 samples"):
        ResumableSampler(10, lengths=[1, 2, 3], group_by_length=True, batch_size=2)
    with pytest.raises(DatasetError, match="group_by_length needs the per-rank batch_size"):
        ResumableSampler(3, lengths=[1, 2, 3], group_by_length=True)
    with pytest.raises(DatasetError, match="megabatch_mult must be a positive integer, got 0"):
        ResumableSampler(3, lengths=[1, 2, 3], group_by_length=True, batch_size=1, megabatch_mult=0)


def test_lengths_without_grouping_warn_and_change_nothing(caplog):
    lengths = chat_like_lengths(50)
    assert list(ResumableSampler(50, seed=1, lengths=lengths)) == list(ResumableSampler(50, seed=1))
    assert "group_by_length is false" in caplog.text
