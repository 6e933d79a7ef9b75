import pytest
import torch

from automodel.components.datasets import DatasetError, default_collater


def test_pads_to_multiple_with_pad_id_ignore_index_and_mask():
    batch = [
        {"input_ids": [5, 6, 7], "labels": [-100, 7, 8]},
        {"input_ids": [9, 10, 11, 12, 13], "labels": [10, 11, 12, 13, 14]},
    ]
    out = default_collater(batch, pad_token_id=3, pad_seq_len_divisible=4)
    assert out["input_ids"].dtype == out["labels"].dtype == out["attention_mask"].dtype == torch.long
    assert out["input_ids"].tolist() == [[5, 6, 7, 3, 3, 3, 3, 3], [9, 10, 11, 12, 13, 3, 3, 3]]
    assert out["labels"].tolist() == [[-100, 7, 8] + [-100] * 5, [10, 11, 12, 13, 14] + [-100] * 3]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]


def test_pads_to_longest_without_multiple_and_defaults_pad_to_zero():
    out = default_collater([{"input_ids": [4], "labels": [5]}, {"input_ids": [4, 4], "labels": [5, 5]}])
    assert out["input_ids"].tolist() == [[4, 0], [4, 4]]
    assert out["attention_mask"].tolist() == [[1, 0], [1, 1]]


def test_passes_through_per_token_extra_keys_and_other_values():
    batch = [
        {"input_ids": [1, 2], "labels": [2, 3], "position_ids": [0, 1], "id": "a"},
        {"input_ids": [1, 2, 3], "labels": [2, 3, 4], "position_ids": [0, 1, 2], "id": "b"},
    ]
    out = default_collater(batch, pad_token_id=0)
    assert out["position_ids"].tolist() == [[0, 1, 0], [0, 1, 2]]
    assert out["id"] == ["a", "b"]


def test_unequal_input_ids_and_labels_is_an_error():
    with pytest.raises(DatasetError, match="sample 1 of the batch has 2 input_ids but 3 labels"):
        default_collater([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2], "labels": [1, 2, 3]}])


def test_bad_pad_multiple_is_an_error():
    with pytest.raises(DatasetError, match="pad_seq_len_divisible must be a positive integer"):
        default_collater([{"input_ids": [1], "labels": [1]}], pad_seq_len_divisible=0)
