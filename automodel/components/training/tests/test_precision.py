import pytest
import torch

from automodel.components.training import ClipGradNormConfig, MixedPrecisionConfig, TrainingError


def test_bf16_autocast_is_the_default():
    cfg = MixedPrecisionConfig()
    assert cfg.torch_dtype is torch.bfloat16
    layer = torch.nn.Linear(4, 4)
    with cfg.autocast(torch.device("cpu")):
        out = layer(torch.randn(2, 4))
    assert out.dtype is torch.bfloat16 and layer.weight.dtype is torch.float32


@pytest.mark.parametrize("dtype", ["none", None, "fp32"])
def test_none_means_fp32(dtype):
    with MixedPrecisionConfig(dtype=dtype).autocast(torch.device("cpu")):
        assert torch.nn.Linear(4, 4)(torch.randn(2, 4)).dtype is torch.float32


def test_fp16_is_refused():
    with pytest.raises(TrainingError, match="fp16 autocast needs loss scaling"):
        MixedPrecisionConfig(dtype="fp16")


def test_fp16_weights_on_cpu_are_refused():
    model = torch.nn.Linear(4, 4).half()
    with pytest.raises(TrainingError, match="float16, which runs ~100x slower than bf16 on CPU"):
        MixedPrecisionConfig().check(model, torch.device("cpu"))


def test_clip_grad_norm_validation():
    assert ClipGradNormConfig().max_norm == 1.0
    assert ClipGradNormConfig(max_norm=None).max_norm is None
    with pytest.raises(TrainingError, match="clip_grad_norm.max_norm must be > 0"):
        ClipGradNormConfig(max_norm=0)


def test_frozen_linear_weights_are_stored_in_bf16_with_identical_outputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10))
    model[1].requires_grad_(False)  # frozen: cast
    x = torch.randint(0, 10, (2, 5))
    cfg = MixedPrecisionConfig()
    with cfg.autocast(torch.device("cpu")):
        before = model(x)
    assert cfg.cast_frozen_linear_weights(model) == 2  # model[1].weight and .bias
    assert model[1].weight.dtype is torch.bfloat16 and model[2].weight.dtype is torch.float32
    assert model[0].weight.dtype is torch.float32  # embeddings are not linear layers
    with cfg.autocast(torch.device("cpu")):
        assert torch.equal(model(x), before)


def test_tied_frozen_weights_keep_their_dtype():
    emb, head = torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10, bias=False)
    head.weight = emb.weight
    model = torch.nn.Sequential(emb, head).requires_grad_(False)
    assert MixedPrecisionConfig().cast_frozen_linear_weights(model) == 0
    assert (
        MixedPrecisionConfig(dtype="none").cast_frozen_linear_weights(torch.nn.Linear(2, 2).requires_grad_(False)) == 0
    )
