import pytest
import torch

from automodel.components.optim import OptimError, build_param_groups


class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(16, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.input_layernorm = torch.nn.LayerNorm(8)
        self.frozen = torch.nn.Linear(8, 8, bias=False)
        self.frozen.weight.requires_grad_(False)
        self.custom_norm_matrix = torch.nn.Parameter(torch.ones(2, 2))  # 2-D but named like a norm


def _names(model, params):
    ids = {id(p) for p in params}
    return sorted(n for n, p in model.named_parameters() if id(p) in ids)


def test_split_biases_and_norms_from_matrices():
    model = _Tiny()
    decay, no_decay = build_param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(model, decay["params"]) == ["embed_tokens.weight", "proj.weight"]
    assert _names(model, no_decay["params"]) == [
        "custom_norm_matrix",
        "input_layernorm.bias",
        "input_layernorm.weight",
        "proj.bias",
    ]
    optimizer = torch.optim.AdamW(build_param_groups(model, 0.1), lr=1e-3)  # accepted as-is by torch
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_custom_patterns_and_empty_groups_dropped():
    model = _Tiny()
    groups = build_param_groups(model, 0.1, no_decay_patterns=("embed",))
    assert _names(model, groups[1]["params"]) == [
        "embed_tokens.weight",
        "input_layernorm.bias",
        "input_layernorm.weight",
        "proj.bias",
    ]
    only_vectors = torch.nn.LayerNorm(4)
    groups = build_param_groups(only_vectors, 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.0


def test_errors():
    with pytest.raises(OptimError, match=r"weight_decay=-0.1 must be >= 0"):
        build_param_groups(_Tiny(), -0.1)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(OptimError, match="no trainable parameter"):
        build_param_groups(frozen, 0.1)
