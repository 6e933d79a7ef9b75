import pytest
import torch
import torch.nn.functional as F
from torch import nn

from automodel.components._peft import LinearLoRA, PeftConfig, apply_lora, merge_lora_

from .conftest import VOCAB, logits, randomize_adapters, tiny_llama, tiny_qwen2


def _train(model, input_ids, steps=3, lr=1e-2):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        out = model(input_ids=input_ids).logits
        loss = F.cross_entropy(out.reshape(-1, VOCAB), input_ids.roll(-1, dims=1).reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return optimizer


@pytest.mark.parametrize("use_dora", [False, True])
def test_only_adapters_train_and_base_stays_put(input_ids, use_dora):
    model = tiny_qwen2()
    reference = logits(model, input_ids)
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    apply_lora(model, PeftConfig(target_modules=["*_proj"], dim=4, use_dora=use_dora, dropout=0.1))
    # B = 0: the patched model is the base model at init.
    torch.testing.assert_close(logits(model, input_ids), reference, rtol=0, atol=1e-6)

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    suffixes = ("lora_A.weight", "lora_B.weight") + (("lora_magnitude_vector",) if use_dora else ())
    assert trainable and all(n.endswith(suffixes) for n in trainable)
    assert len(trainable) == 14 * len(suffixes)

    optimizer = _train(model, input_ids)
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for n, p in model.named_parameters() if n in trainable}
    assert len(optimizer.state) == len(trainable)
    for name, param in model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), name
    assert not torch.allclose(logits(model, input_ids), reference, atol=1e-4)


def _layer(dropout_position, use_dora=False, dropout=0.5):
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    config = PeftConfig(
        target_modules=["x"], dim=4, dropout=dropout, dropout_position=dropout_position, use_dora=use_dora
    )
    from automodel.components._peft._layer import patch_linear

    lora = patch_linear(layer, config)
    randomize_adapters(lora)
    return lora


@pytest.mark.parametrize("use_dora", [False, True])
def test_dropout_pre_and_post(use_dora):
    x = torch.randn(3, 16)
    pre, post, none = (_layer(p, use_dora, d) for p, d in (("pre", 0.5), ("post", 0.5), ("post", 0.0)))
    with torch.no_grad():
        expected = none.eval()(x)
        # Eval: dropout is off and both positions equal the dropout-free layer.
        torch.testing.assert_close(pre.eval()(x), expected)
        torch.testing.assert_close(post.eval()(x), expected)
        pre.train(), post.train()
        torch.manual_seed(1)
        y_pre = pre(x)
        torch.manual_seed(1)
        y_post = post(x)
    assert not torch.allclose(y_pre, expected) and not torch.allclose(y_post, expected)
    assert not torch.allclose(y_pre, y_post)
    if not use_dora:
        # Post-dropout zeroes whole LoRA output features: those equal the base output exactly.
        base = F.linear(x, post.weight, post.bias)
        delta = (y_post - base).abs()
        assert (delta < 1e-7).any() and (delta > 1e-4).any()


def test_explicit_formula_lora_and_dora():
    x = torch.randn(5, 16)
    lora = _layer("pre", dropout=0.0).eval()
    scale = 32 / 4
    W, b, A, B = lora.weight, lora.bias, lora.lora_A.weight, lora.lora_B.weight
    with torch.no_grad():
        torch.testing.assert_close(lora(x), x @ (W + scale * B @ A).T + b)
        dora = _layer("post", use_dora=True, dropout=0.0).eval()
        W, b, A, B, m = dora.weight, dora.bias, dora.lora_A.weight, dora.lora_B.weight, dora.lora_magnitude_vector
        merged = W + scale * B @ A
        expected = x @ (m[:, None] * merged / merged.norm(dim=1, keepdim=True)).T + b
        torch.testing.assert_close(dora(x), expected)


def test_dora_gradients_treat_the_norm_as_constant():
    layer = _layer("pre", use_dora=True, dropout=0.0)
    layer.weight.requires_grad_(False)
    x = torch.randn(4, 16)
    layer(x).square().sum().backward()
    W, b = layer.weight, layer.bias
    A = layer.lora_A.weight.detach().clone().requires_grad_(True)
    m = layer.lora_magnitude_vector.detach().clone().requires_grad_(True)
    merged = W + 8.0 * layer.lora_B.weight.detach() @ A
    norm = merged.norm(dim=1, keepdim=True).detach()  # DoRA section 4.3
    (x @ (m[:, None] * merged / norm).T + b).square().sum().backward()
    torch.testing.assert_close(layer.lora_A.weight.grad, A.grad)
    torch.testing.assert_close(layer.lora_magnitude_vector.grad, m.grad)


def test_bf16_autocast_with_fp32_weights(input_ids):
    model = tiny_llama()
    apply_lora(model, PeftConfig(target_modules=["q_proj", "v_proj", "up_proj"], dim=4, use_dora=False))
    randomize_adapters(model)
    reference = logits(model, input_ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(model, input_ids)
        q = model.model.layers[0].self_attn.q_proj
        assert q(torch.randn(2, 64)).dtype is torch.bfloat16
    assert model.model.layers[0].self_attn.q_proj.lora_A.weight.dtype is torch.float32
    torch.testing.assert_close(out.float(), reference, atol=0.1, rtol=0.05)
    # Training under autocast reaches the adapters.
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=input_ids).logits.float().sum().backward()
    assert q.lora_A.weight.grad is not None and q.lora_A.weight.grad.dtype is torch.float32


def test_dora_under_autocast_matches_fp32():
    layer = _layer("pre", use_dora=True, dropout=0.0).eval()
    x = torch.randn(4, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype is torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x).detach(), atol=0.05, rtol=0.05)


def test_lora_dtype_bf16_on_fp32_model(input_ids):
    model = tiny_llama()
    apply_lora(model, PeftConfig(target_modules=["q_proj"], dim=4, lora_dtype="bfloat16"))
    randomize_adapters(model)
    out = logits(model, input_ids)
    assert out.dtype is torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("use_dora", [False, True])
def test_torch_compile_forward_and_backward(use_dora):
    # aot_eager: full graph capture and AOT autograd without inductor's ~15 s C++ build (checked by hand: it works).
    layer = _layer("post", use_dora=use_dora, dropout=0.1)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(3, 16)
    layer.eval()
    torch.testing.assert_close(compiled(x), layer(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(compiled(x), layer(x))
    layer.train()
    compiled(x).sum().backward()
    assert layer.lora_B.weight.grad is not None


def test_merge_lora_in_place_restores_plain_linears(input_ids):
    model = tiny_qwen2()
    apply_lora(model, PeftConfig(target_modules=["*_proj"], dim=4, use_dora=True))
    randomize_adapters(model)
    expected = logits(model, input_ids)
    keys = {k for k in tiny_qwen2().state_dict()}
    merge_lora_(model)
    assert not any(isinstance(m, LinearLoRA) for m in model.modules())
    assert set(model.state_dict()) == keys
    torch.testing.assert_close(logits(model, input_ids), expected, rtol=0, atol=1e-5)
