import pytest
import torch

from automodel.components.loss import FusedLinearCrossEntropy, LossError, MaskedCrossEntropy


def make(seed=0, batch=3, seq=7, hidden=16, vocab=50, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(batch, seq, hidden, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, vocab, (batch, seq), generator=g)
    labels[torch.rand(batch, seq, generator=g) < 0.5] = -100  # about half the positions carry no loss
    return h, w, labels


def plain(h, w, labels, num=None):
    return MaskedCrossEntropy()(h @ w.T, labels, num_label_tokens=num)


@pytest.mark.parametrize("chunk_size", [1, 4, 1024])
@pytest.mark.parametrize("num", [None, 37])
def test_same_loss_and_gradients_as_the_plain_path(chunk_size, num):
    h1, w1, labels = make()
    h2, w2, _ = make()
    ours = FusedLinearCrossEntropy(chunk_size=chunk_size)(h1, labels, w1, num_label_tokens=num)
    ref = plain(h2, w2, labels, num)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    (ours * 1.7).backward()  # a non-unit upstream gradient is scaled through
    (ref * 1.7).backward()
    torch.testing.assert_close(h1.grad, h2.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w1.grad, w2.grad, atol=1e-5, rtol=1e-5)


def test_tied_weight_receives_both_gradients():
    # The output projection shares its weight with the embedding (tied): both uses must add their gradients.
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(1))
    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(50, 16)
        hidden = torch.tanh(emb(ids))
        loss = (
            FusedLinearCrossEntropy(chunk_size=3)(hidden, labels, emb.weight)
            if fused
            else plain(hidden, emb.weight, labels)
        )
        loss.backward()
        grads.append(emb.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def test_bf16_autocast_matches_the_plain_autocast_path():
    h1, w1, labels = make(seed=1, hidden=32, vocab=64)
    h2, w2, _ = make(seed=1, hidden=32, vocab=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = FusedLinearCrossEntropy(chunk_size=5)(h1, labels, w1)
        ref = plain(h2, w2, labels)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, atol=2e-2, rtol=2e-2)
    ours.backward()
    ref.backward()
    assert h1.grad.dtype == torch.float32 and w1.grad.dtype == torch.float32
    torch.testing.assert_close(h1.grad, h2.grad, atol=3e-2, rtol=5e-2)
    torch.testing.assert_close(w1.grad, w2.grad, atol=3e-2, rtol=5e-2)


def test_no_supervised_token_gives_a_zero_that_keeps_the_graph():
    h, w, labels = make()
    loss = FusedLinearCrossEntropy()(h, torch.full_like(labels, -100), w)
    assert loss.item() == 0.0
    loss.backward()
    assert h.grad.abs().sum().item() == 0.0


def test_bad_arguments():
    with pytest.raises(LossError, match="loss_fn.chunk_size must be a positive integer"):
        FusedLinearCrossEntropy(chunk_size=0)
    with pytest.raises(LossError, match="loss_fn.backend='fast' is not supported"):
        FusedLinearCrossEntropy(backend="fast")
    with pytest.raises(LossError, match="backend: liger needs CUDA"):
        h, w, labels = make()
        FusedLinearCrossEntropy(backend="liger")(h, labels, w)
    with pytest.raises(LossError, match="do not fit"):
        FusedLinearCrossEntropy()(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), torch.zeros(5, 8))
