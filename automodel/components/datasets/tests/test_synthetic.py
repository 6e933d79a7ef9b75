import pytest

from automodel.components.datasets import DatasetError
from automodel.components.datasets.llm.synthetic import make_synthetic_dataset


def test_rows_are_full_length_shifted_and_deterministic():
    ds = make_synthetic_dataset(vocab_size=100, seq_length=16, num_samples=3, seed=1)
    assert len(ds) == 3 and ds.lengths == [16, 16, 16]
    a, b = ds[0], ds[1]
    assert a["labels"][:-1] == a["input_ids"][1:]  # shifted: position t predicts token t + 1
    assert min(a["input_ids"]) >= 10 and max(a["input_ids"]) < 100 and a != b
    assert make_synthetic_dataset(vocab_size=100, seq_length=16, num_samples=3, seed=1)[2] == ds[2]


def test_needs_a_vocabulary():
    with pytest.raises(DatasetError, match="needs vocab_size"):
        make_synthetic_dataset(seq_length=8)
    with pytest.raises(DatasetError, match="need vocab_size > min_token_id"):
        make_synthetic_dataset(vocab_size=5)
