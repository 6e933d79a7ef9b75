import logging

import pytest
import torch
from torch import nn

from automodel.components._peft import LinearLoRA, PeftConfig, PeftError, apply_lora, lora_modules

from .conftest import tiny_llama, tiny_qwen2

LAYER0 = "model.layers.0"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dim": 0}, r"peft\.dim .*positive integer, got 0"),
        ({"dim": -4}, r"peft\.dim"),
        ({"dim": 2.5}, r"peft\.dim"),
        ({"alpha": 0}, r"peft\.alpha must be a positive number, got 0"),
        ({"dropout": 1.0}, r"peft\.dropout must be in \[0, 1\), got 1\.0"),
        ({"dropout": -0.1}, r"peft\.dropout"),
        ({"dropout_position": "mid"}, r"dropout_position='mid' .*\['pre', 'post'\]"),
        ({"lora_A_init": "zeros"}, r"lora_A_init='zeros' .*\['xavier', 'kaiming', 'gaussian'\]"),
        ({"lora_dtype": "int8"}, r"lora_dtype='int8' is not a known dtype"),
        ({"target_modules": [""]}, r"target_modules must hold non-empty strings"),
    ],
)
def test_validation_names_the_key(kwargs, match):
    with pytest.raises(PeftError, match=match):
        PeftConfig(**{"target_modules": ["q_proj"], **kwargs})


def test_defaults_follow_nemo():
    assert PeftConfig().target_modules == ["*_proj"]  # no target: the reference system's default
    assert PeftConfig(target_modules=[]).target_modules == ["*_proj"]
    assert PeftConfig(match_all_linear=True).target_modules == []
    config = PeftConfig(target_modules="q_proj", lora_dtype="torch.bfloat16")
    assert config.target_modules == ["q_proj"]
    assert (config.dim, config.alpha, config.dropout_position, config.lora_A_init) == (8, 32, "post", "xavier")
    assert config.scale == 4.0
    assert config.torch_lora_dtype is torch.bfloat16
    assert PeftConfig(target_modules=["q_proj"], dim=16, alpha=8, use_rslora=True).scale == pytest.approx(2.0)


def _adapted(config: PeftConfig, model=None) -> list[str]:
    model = model or tiny_llama()
    names = apply_lora(model, config)
    assert names == list(lora_modules(model))
    return names


def test_leaf_names_wildcards_and_full_paths():
    assert _adapted(PeftConfig(target_modules=["q_proj", "v_proj"])) == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    ]
    proj = _adapted(PeftConfig(target_modules=["*_proj"]))
    assert len(proj) == 14 and all(n.endswith("_proj") for n in proj)
    assert _adapted(PeftConfig(target_modules=["*.self_attn.*"])) == [
        f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")
    ]
    assert _adapted(PeftConfig(target_modules=[f"{LAYER0}.mlp.up_proj"])) == [f"{LAYER0}.mlp.up_proj"]
    # HF PEFT's suffix rule.
    assert _adapted(PeftConfig(target_modules=["mlp.down_proj"])) == [f"model.layers.{i}.mlp.down_proj" for i in (0, 1)]


def test_exclude_wins_and_unmatched_exclude_warns(caplog):
    with caplog.at_level(logging.WARNING):
        names = _adapted(PeftConfig(target_modules=["*_proj"], exclude_modules=["*.mlp.*", "k_proj", "nothing_here"]))
    assert names == [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj", "o_proj")]
    assert "'nothing_here' matches no nn.Linear" in caplog.text


def test_exclude_modules_alone_adapts_every_other_linear_as_the_reference_system_does():
    model = tiny_llama()
    model.model.extra_fc = nn.Linear(8, 8)  # a linear layer whose name does not end in _proj (Phi's fc1, LLaVA's...)
    config = PeftConfig(exclude_modules=["*.mlp.*"])
    assert config.match_all_linear and config.target_modules == []
    attention = [f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    # not the output head: as with match_all_linear, it is only adapted when named
    assert _adapted(config, model) == [*attention, "model.extra_fc"]


def test_use_triton_is_accepted_and_changes_nothing(caplog):
    with caplog.at_level(logging.WARNING):
        config = PeftConfig(target_modules=["q_proj"], use_triton=True)
    assert "peft.use_triton is ignored" in caplog.text
    assert _adapted(config) == _adapted(PeftConfig(target_modules=["q_proj"]))
    with pytest.raises(PeftError, match=r"peft\.use_triton must be true or false, got 'yes'"):
        PeftConfig(target_modules=["q_proj"], use_triton="yes")


def test_match_all_linear_skips_the_output_head_unless_named():
    model = tiny_llama()
    names = _adapted(PeftConfig(match_all_linear=True), model)
    assert len(names) == 14 and "lm_head" not in names
    assert type(model.lm_head) is nn.Linear
    # A wildcard that happens to match the head still leaves it alone...
    assert "lm_head" not in _adapted(PeftConfig(target_modules=["*"]))
    # ...but naming it adapts it.
    assert _adapted(PeftConfig(target_modules=["lm_head"])) == ["lm_head"]


def test_pattern_matching_nothing_lists_available_modules():
    with pytest.raises(PeftError) as err:
        apply_lora(tiny_llama(), PeftConfig(target_modules=["q_prj", "v_proj"]))
    message = str(err.value)
    assert "target_modules ['q_prj'] matched no nn.Linear" in message
    assert "available: model.layers.0.self_attn.q_proj, model.layers.0.self_attn.k_proj" in message
    assert "(leaf names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)" in message


def test_everything_excluded_and_double_apply_are_errors():
    with pytest.raises(PeftError, match="selects no nn.Linear"):
        apply_lora(tiny_llama(), PeftConfig(target_modules=["q_proj"], exclude_modules=["q_proj"]))
    model = tiny_llama()
    apply_lora(model, PeftConfig(target_modules=["q_proj"]))
    with pytest.raises(PeftError, match="already have LoRA adapters"):
        apply_lora(model, PeftConfig(target_modules=["q_proj"]))


def test_patching_keeps_base_parameters_and_state_dict_keys():
    model = tiny_qwen2()
    before = dict(model.named_parameters())
    keys_before = set(model.state_dict())
    apply_lora(model, PeftConfig(target_modules=["q_proj", "k_proj", "v_proj"], dim=4, use_dora=True))
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, LinearLoRA) and q.bias is not None
    assert q.weight is before["model.layers.0.self_attn.q_proj.weight"]
    assert q.bias is before["model.layers.0.self_attn.q_proj.bias"]
    added = set(model.state_dict()) - keys_before
    assert keys_before <= set(model.state_dict())
    assert all(
        k.rsplit(".", 2)[-2:] in (["lora_A", "weight"], ["lora_B", "weight"]) or k.endswith("lora_magnitude_vector")
        for k in added
    )
    # GQA: k/v project to 2 kv heads * 16 = 32 features.
    k = model.model.layers[0].self_attn.k_proj
    assert k.lora_B.weight.shape == (32, 4) and k.lora_magnitude_vector.shape == (32,)


def test_init_choices_and_lora_dtype():
    model = tiny_llama()
    apply_lora(model, PeftConfig(target_modules=["q_proj"], dim=4, lora_A_init="gaussian", lora_dtype="bf16"))
    q = model.model.layers[0].self_attn.q_proj
    assert q.lora_A.weight.dtype is torch.bfloat16 and q.weight.dtype is torch.float32
    assert torch.count_nonzero(q.lora_B.weight) == 0 and torch.count_nonzero(q.lora_A.weight) > 0
    stds = {}
    for init in ("xavier", "kaiming", "gaussian"):
        torch.manual_seed(0)
        m = tiny_llama()
        apply_lora(m, PeftConfig(target_modules=["up_proj"], dim=8, lora_A_init=init))
        stds[init] = m.model.layers[0].mlp.up_proj.lora_A.weight.std().item()
    # gaussian: std 1/r; xavier normal: sqrt(2/(64+8)); kaiming uniform(a=sqrt(5)): 1/sqrt(3*64).
    assert stds["gaussian"] == pytest.approx(1 / 8, rel=0.15)
    assert stds["xavier"] == pytest.approx((2 / 72) ** 0.5, rel=0.15)
    assert stds["kaiming"] == pytest.approx((1 / 192) ** 0.5, rel=0.15)
