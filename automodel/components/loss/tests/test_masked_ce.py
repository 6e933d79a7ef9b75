import pytest
import torch
import torch.nn.functional as F

from automodel.components.loss import LossError, MaskedCrossEntropy


def _random_batch(batch=3, seq=7, vocab=11, seed=0, ignored_frac=0.3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, seq, vocab, generator=g)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < ignored_frac] = -100
    return logits, labels


def test_equals_torch_mean_over_supervised_tokens():
    logits, labels = _random_batch()
    expected = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100)
    got = MaskedCrossEntropy()(logits, labels)
    torch.testing.assert_close(got, expected)


def test_accepts_flat_logits_and_never_shifts():
    logits, labels = _random_batch()
    flat = MaskedCrossEntropy()(logits.view(-1, 11), labels.view(-1))
    torch.testing.assert_close(flat, MaskedCrossEntropy()(logits, labels))
    # Position t is scored against labels[t]: a one-hot logit on exactly that label gives a lower loss.
    labels = torch.tensor([[1, 2, 3]])
    peaked = torch.full((1, 3, 5), -10.0)
    peaked[0, torch.arange(3), labels[0]] = 10.0
    assert MaskedCrossEntropy()(peaked, labels).item() < 1e-6


def test_num_label_tokens_divides_sum_and_sum_reduction():
    logits, labels = _random_batch()
    total = F.cross_entropy(logits.view(-1, 11), labels.view(-1), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(MaskedCrossEntropy(reduction="sum")(logits, labels), total)
    torch.testing.assert_close(MaskedCrossEntropy()(logits, labels, num_label_tokens=40), total / 40)
    torch.testing.assert_close(MaskedCrossEntropy()(logits, labels, num_label_tokens=torch.tensor(40)), total / 40)


def test_ignore_index_positions_do_not_contribute():
    logits, labels = _random_batch(ignored_frac=0.0)
    loss_fn = MaskedCrossEntropy(ignore_index=7)
    labels[labels == 7] = 0
    labels[:, -2:] = 7
    changed = logits.clone()
    changed[:, -2:] = torch.randn_like(changed[:, -2:]) * 100  # garbage where labels are ignored
    torch.testing.assert_close(loss_fn(changed, labels), loss_fn(logits, labels))
    expected = F.cross_entropy(logits[:, :-2].reshape(-1, 11), labels[:, :-2].reshape(-1))
    torch.testing.assert_close(loss_fn(logits, labels), expected)


def test_accumulation_with_global_count_equals_one_big_batch():
    logits, labels = _random_batch(batch=4, seq=9, seed=3)
    loss_fn = MaskedCrossEntropy()
    # Two micro-batches with very different supervised counts: a per-micro-batch mean would be wrong here.
    labels = labels.clone()
    labels[:2, 2:] = -100
    big = logits.clone().requires_grad_(True)
    loss_big = loss_fn(big, labels)
    loss_big.backward()

    num_label_tokens = int((labels != -100).sum())
    parts = logits.clone().requires_grad_(True)
    total = torch.zeros(())
    for rows in (slice(0, 2), slice(2, 4)):
        micro = loss_fn(parts[rows], labels[rows], num_label_tokens=num_label_tokens)
        micro.backward()
        total = total + micro.detach()

    torch.testing.assert_close(total, loss_big.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(parts.grad, big.grad, atol=1e-6, rtol=1e-6)
    naive = sum(loss_fn(logits[r], labels[r]) for r in (slice(0, 2), slice(2, 4))) / 2
    assert abs(naive.item() - loss_big.item()) > 1e-3  # the test data really distinguishes the two


def test_no_supervised_token_returns_zero_that_keeps_the_graph():
    logits = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.full((2, 4), -100)
    loss = MaskedCrossEntropy()(logits, labels)
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_bf16_logits_are_upcast_to_fp32():
    logits, labels = _random_batch(vocab=50)
    logits = (logits * 8).bfloat16()
    expected = F.cross_entropy(logits.float().view(-1, 50), labels.view(-1))
    got = MaskedCrossEntropy()(logits, labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected)
    assert MaskedCrossEntropy(fp32_upcast=False)(logits, labels).dtype == torch.bfloat16


def test_errors():
    with pytest.raises(LossError, match=r"reduction='avg'.*\['mean', 'sum'\]"):
        MaskedCrossEntropy(reduction="avg")
    with pytest.raises(LossError, match=r"logits of shape \(2, 5, 3\) do not match labels of shape \(2, 4\)"):
        MaskedCrossEntropy()(torch.zeros(2, 5, 3), torch.zeros(2, 4, dtype=torch.long))
