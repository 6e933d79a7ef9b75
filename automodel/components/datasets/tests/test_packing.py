import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

from automodel.components.datasets import DatasetError, PackedDataset, SFTDataset, pack_dataset, packed_collater

VOCAB = 96


def make_dataset(lengths: list[int], seed: int = 0, prompt_fraction: float = 0.4) -> SFTDataset:
    """Random shifted samples: the first ~40% of each carries no loss (a prompt), the rest does (an answer)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids, labels = [], []
    for n in lengths:
        tokens = torch.randint(1, VOCAB, (n + 1,), generator=generator).tolist()
        prompt = int(n * prompt_fraction)
        input_ids.append(tokens[:-1])
        labels.append([-100] * prompt + tokens[prompt + 1 :])
    return SFTDataset(input_ids, labels)


def tiny_llama(attn_implementation: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation=attn_implementation,
    )
    return LlamaForCausalLM(config).eval()


# --- pack_dataset -------------------------------------------------------------------------------------------------


def test_rows_hold_whole_samples_each_exactly_once_and_fit_the_size():
    lengths = np.random.default_rng(0).integers(1, 40, size=300).tolist()
    dataset = make_dataset(lengths)
    packed = pack_dataset(dataset, 64)

    placed = [i for row in range(len(packed)) for i in packed.row_samples(row)]
    assert sorted(placed) == list(range(300))
    assert max(packed.lengths) <= 64
    # Best fit wastes little room on small samples: within 3% of the lower bound on the number of rows.
    assert len(packed) <= 1.03 * sum(lengths) / 64 + 1
    for row in range(len(packed)):
        item = packed[row]
        samples = [dataset[i] for i in packed.row_samples(row)]
        assert item["input_ids"] == [t for s in samples for t in s["input_ids"]]
        assert item["labels"] == [t for s in samples for t in s["labels"]]
        assert item["position_ids"] == [p for s in samples for p in range(len(s["input_ids"]))]
        assert item["seq_lens"] == [len(s["input_ids"]) for s in samples]
        assert packed.lengths[row] == len(item["input_ids"])


def test_packing_is_a_pure_function_of_lengths_and_seed():
    lengths = [5, 5, 5, 5, 7, 7, 3, 3, 9, 12, 2, 2] * 5
    rows = lambda packed: [packed.row_samples(i) for i in range(len(packed))]  # noqa: E731
    first = rows(pack_dataset(make_dataset(lengths), 16, seed=1))
    assert rows(pack_dataset(make_dataset(lengths, seed=5), 16, seed=1)) == first  # token values do not matter
    assert rows(pack_dataset(make_dataset(lengths), 16, seed=2)) != first  # ties are broken by the seed


def test_rows_follow_the_dataset_order_not_the_packing_order():
    # Best fit places the longest samples first; emitted that way, an unshuffled run would train on the longest
    # samples first and the shortest last. Rows come in the order of their earliest sample instead.
    lengths = np.random.default_rng(1).integers(1, 40, size=200).tolist()
    packed = pack_dataset(make_dataset(lengths), 64)
    rows = [packed.row_samples(i) for i in range(len(packed))]
    assert all(row == sorted(row) for row in rows)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert rows[0][0] == 0


def test_a_dataset_without_lengths_is_measured(caplog):
    samples = [{"input_ids": [1] * n, "labels": [2] * n} for n in (3, 4, 5, 6)]
    with caplog.at_level(logging.INFO, logger="automodel.components.datasets.packing"):
        packed = pack_dataset(samples, 9)
    assert isinstance(packed, PackedDataset)
    assert sorted(packed.lengths) == [9, 9]
    assert "packed 4 samples into 2 rows of 9 tokens: efficiency 100.0% (0 truncated, 0 dropped" in caplog.text


def test_long_samples_are_truncated_or_dropped_and_counted(caplog):
    # Sample 0 (30 tokens) keeps supervised tokens in its first 16; sample 1's loss lies entirely past token 16.
    dataset = SFTDataset(
        [list(range(1, 31)), list(range(1, 31)), [1, 2, 3]],
        [list(range(2, 32)), [-100] * 20 + list(range(21, 31)), [2, 3, 4]],
    )
    with caplog.at_level(logging.INFO, logger="automodel.components.datasets.packing"):
        truncated = pack_dataset(dataset, 16)
    assert sorted(i for r in range(len(truncated)) for i in truncated.row_samples(r)) == [0, 2]
    assert sorted(truncated.lengths) == [3, 16]
    row = next(r for r in range(len(truncated)) if truncated.row_samples(r) == [0])
    assert truncated[row]["labels"] == list(range(2, 18))  # a cut sample keeps its own shifted labels
    assert "(1 truncated, 1 dropped" in caplog.text

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="automodel.components.datasets.packing"):
        dropped = pack_dataset(dataset, 16, on_overflow="drop")
    assert [dropped.row_samples(r) for r in range(len(dropped))] == [[2]]
    assert "(0 truncated, 2 dropped" in caplog.text


def test_pack_dataset_errors_name_the_option():
    dataset = make_dataset([4, 5])
    with pytest.raises(DatasetError, match=r"packed_sequence_size must be an integer >= 2 .* got 1"):
        pack_dataset(dataset, 1)
    with pytest.raises(DatasetError, match=r"on_overflow must be one of \['truncate', 'drop'\], got 'cut'"):
        pack_dataset(dataset, 8, on_overflow="cut")
    with pytest.raises(DatasetError, match="all 2 samples were left out of packing"):
        pack_dataset(dataset, 3, on_overflow="drop")
    with pytest.raises(DatasetError, match="sample 1 has 2 input_ids but 1 labels"):
        pack_dataset([{"input_ids": [1], "labels": [1]}, {"input_ids": [1, 2], "labels": [1]}], 8)


# --- packed_collater ------------------------------------------------------------------------------------------------


def test_collater_pads_with_restarting_positions_and_no_attention_mask():
    packed = pack_dataset(make_dataset([6, 5, 4, 3]), 12)
    rows = [packed[i] for i in range(len(packed))]
    batch = packed_collater(rows, pad_token_id=7)
    assert "attention_mask" not in batch
    assert set(batch) == {"input_ids", "labels", "position_ids", "_token_mask"}
    assert batch["input_ids"].shape == (2, 11)  # rows of 11 (6+5) and 7 (4+3) tokens
    short = min(range(2), key=lambda r: len(rows[r]["input_ids"]))
    assert batch["input_ids"][short, 7:].tolist() == [7] * 4
    assert batch["labels"][short, 7:].tolist() == [-100] * 4
    assert batch["position_ids"][short].tolist() == [0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3]  # padding: its own document
    assert batch["_token_mask"].dtype == torch.bool
    assert batch["_token_mask"].sum().item() == 18
    assert batch["_token_mask"][short].tolist() == [True] * 7 + [False] * 4


def test_collater_pad_to_and_divisible():
    rows = [pack_dataset(make_dataset([5, 4]), 16)[0]]
    assert packed_collater(rows, pad_to=16)["input_ids"].shape == (1, 16)
    assert packed_collater(rows, pad_seq_len_divisible=8)["input_ids"].shape == (1, 16)
    with pytest.raises(DatasetError, match="a packed row has 9 tokens but the collater pads to pad_to=8"):
        packed_collater(rows, pad_to=8)


def test_collater_refuses_unpacked_samples():
    with pytest.raises(DatasetError, match=r"lacks \['position_ids'\]; packed_collater takes rows of a packed"):
        packed_collater([{"input_ids": [1, 2], "labels": [2, 3]}])


def test_flash_varlen_boundaries_match_what_transformers_derives_from_position_ids():
    packed = pack_dataset(make_dataset([9, 7, 5, 4, 3, 1]), 16)
    rows = [packed[i] for i in range(len(packed))]
    batch = packed_collater(rows, flash_varlen=True)
    # transformers' own varlen detection, on the batch flattened into one row (the only case it handles itself).
    (cu_q, cu_k), (max_q, _) = prepare_fa_kwargs_from_position_ids(batch["position_ids"].reshape(1, -1))
    assert torch.equal(batch["cu_seq_lens_q"], cu_q)
    assert torch.equal(batch["cu_seq_lens_k"], cu_k)
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == int(max_q) == 9
    # Rows without seq_lens: the boundaries come from the position restarts.
    no_lens = [{k: v for k, v in row.items() if k != "seq_lens"} for row in rows]
    assert torch.equal(packed_collater(no_lens, flash_varlen=True)["cu_seq_lens_q"], cu_q)


# --- packed forward == each sample alone (the correctness test) ---------------------------------------------


def per_document_losses(logits: torch.Tensor, labels: torch.Tensor, seq_lens: list[list[int]]) -> list[torch.Tensor]:
    losses = []
    for row, lens in enumerate(seq_lens):
        start = 0
        for n in lens:
            losses.append(F.cross_entropy(logits[row, start : start + n], labels[row, start : start + n]))
            start += n
    return losses


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_losses_equal_each_sample_run_alone(attn_implementation):
    model = tiny_llama(attn_implementation)
    dataset = make_dataset([13, 9, 7, 6, 5, 4, 3, 2], seed=3)
    packed = pack_dataset(dataset, 20)
    rows = [packed[i] for i in range(len(packed))]
    assert max(len(r["seq_lens"]) for r in rows) >= 3  # several documents share a row
    batch = packed_collater(rows, flash_varlen=True)
    seq_lens = [r["seq_lens"] for r in rows]
    order = [i for r in range(len(packed)) for i in packed.row_samples(r)]

    with torch.no_grad():
        alone_logits = [model(input_ids=torch.tensor([dataset[i]["input_ids"]]), use_cache=False).logits for i in order]
        alone = [F.cross_entropy(lg[0], torch.tensor(dataset[i]["labels"])) for lg, i in zip(alone_logits, order)]

        def packed_losses(**overrides) -> list[torch.Tensor]:
            inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}
            logits = model(**{**inputs, **overrides}).logits
            return per_document_losses(logits, batch["labels"], seq_lens)

        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        for got, want in zip(per_document_losses(logits, batch["labels"], seq_lens), alone):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

        # Normalisation: summed CE over supervised tokens / their count, padding and prompts excluded.
        flat_logits, flat_labels = logits.reshape(-1, VOCAB), batch["labels"].reshape(-1)
        loss = F.cross_entropy(flat_logits, flat_labels, reduction="sum") / (flat_labels != -100).sum()
        want_sum = sum(
            F.cross_entropy(lg[0], torch.tensor(dataset[i]["labels"]), reduction="sum")
            for lg, i in zip(alone_logits, order)
        )
        want_count = sum(sum(label != -100 for label in dataset[i]["labels"]) for i in order)
        torch.testing.assert_close(loss, want_sum / want_count, atol=1e-4, rtol=0)
        assert (flat_labels != -100).sum() == want_count

        # The flash-attention kwargs are accepted (and ignored) by sdpa / eager.
        varlen = {k: batch[k] for k in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
        for got, want in zip(packed_losses(**varlen), alone):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

        # Controls: each way of letting documents see each other is caught (the later documents' losses move).
        def leaks(losses: list[torch.Tensor]) -> float:
            return max(abs(got - want).item() for got, want in zip(losses, alone))

        assert leaks(packed_losses(attention_mask=torch.ones_like(batch["input_ids"]))) > 1e-2
        assert leaks(packed_losses(use_cache=True)) > 1e-2  # a KV cache disables the packed-sequence mask
        # Positions that do not restart: one long causal document.
        no_restart = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        assert leaks(packed_losses(position_ids=no_restart)) > 1e-2
