"""Round trips with the real HF PEFT library as the judge."""

import json
import logging
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from automodel.components._peft import (
    PeftConfig,
    PeftError,
    apply_lora,
    apply_lora_from_pretrained,
    load_adapter,
    lora_state_dict,
    save_adapter,
)

from .conftest import logits, randomize_adapters, tiny_llama, tiny_qwen2

# PEFT calls a transformers API that transformers 5 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


def _peft_load_quietly(base, adapter_dir, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "key" in m.lower() or "unexpected" in m.lower()], messages
    return model


@pytest.mark.parametrize(
    ("make_model", "kwargs"),
    [
        (tiny_llama, {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}),
        (tiny_llama, {"target_modules": ["*_proj"], "use_dora": True, "dropout": 0.1}),
        (tiny_qwen2, {"match_all_linear": True, "use_dora": True, "use_rslora": True, "alpha": 16}),
        (lambda: tiny_llama(tie=True), {"target_modules": ["*_proj"], "exclude_modules": ["model.layers.1.*"]}),
    ],
    ids=["llama-lora", "llama-dora", "qwen2-bias-dora-rslora", "tied-llama-exclude"],
)
def test_our_adapter_loads_in_peft_with_identical_outputs(tmp_path, caplog, input_ids, make_model, kwargs):
    model = make_model()
    config = PeftConfig(dim=4, **kwargs)
    names = apply_lora(model, config)
    randomize_adapters(model)
    ours = logits(model.eval(), input_ids)
    save_adapter(model, tmp_path, config, base_model_name_or_path="some/base", target_module_names=names)

    peft_model = _peft_load_quietly(make_model(), tmp_path, caplog)
    theirs = logits(peft_model, input_ids)
    assert not torch.allclose(ours, logits(make_model(), input_ids), atol=1e-3)  # the adapter does something
    assert (ours - theirs).abs().max().item() <= 1e-5
    # PEFT wrapped exactly our modules.
    assert sorted(n for n, m in peft_model.base_model.model.named_modules() if hasattr(m, "lora_A") and n) == sorted(
        names
    )


def test_adapter_files_keys_and_config_fields(tmp_path):
    model = tiny_llama()
    config = PeftConfig(
        target_modules=["q_proj", "v_proj"], dim=4, alpha=8, dropout=0.05, use_dora=True, use_rslora=True
    )
    apply_lora(model, config)
    save_adapter(model, tmp_path, config, base_model_name_or_path="HuggingFaceTB/SmolLM2-135M")
    keys = sorted(load_file(tmp_path / "adapter_model.safetensors"))
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    assert keys[:3] == [f"{prefix}.lora_A.weight", f"{prefix}.lora_B.weight", f"{prefix}.lora_magnitude_vector"]
    assert len(keys) == 12 and keys == sorted(lora_state_dict(model))
    # Wrapper prefixes (activation checkpointing, torch.compile) are not part of the HF names.
    wrapper = torch.nn.Module()
    wrapper._orig_mod = model
    assert sorted(lora_state_dict(wrapper)) == keys
    hf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert hf["peft_type"] == "LORA" and hf["task_type"] == "CAUSAL_LM"
    assert (hf["r"], hf["lora_alpha"], hf["lora_dropout"]) == (4, 8, 0.05)
    assert hf["target_modules"] == ["q_proj", "v_proj"]
    assert hf["use_dora"] is True and hf["use_rslora"] is True and hf["bias"] == "none"
    assert hf["fan_in_fan_out"] is False and hf["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M"
    extras = json.loads((tmp_path / "automodel_peft.json").read_text())
    assert extras == {"dropout_position": "post", "lora_A_init": "xavier", "lora_dtype": None}
    # PEFT reads the same numbers back, rsLoRA scaling included.
    peft_config = LoraConfig.from_pretrained(str(tmp_path))
    assert peft_config.r == 4 and peft_config.use_rslora and set(peft_config.target_modules) == {"q_proj", "v_proj"}
    assert model.model.layers[0].self_attn.q_proj.scale == pytest.approx(8 / 2)


def test_target_modules_fall_back_to_full_names_when_leaves_overreach(tmp_path):
    model = tiny_llama()
    config = PeftConfig(target_modules=["q_proj"], exclude_modules=["model.layers.1.*"], dim=2)
    apply_lora(model, config)
    save_adapter(model, tmp_path, config, base_model_name_or_path=None)
    hf = json.loads((tmp_path / "adapter_config.json").read_text())
    assert hf["target_modules"] == ["model.layers.0.self_attn.q_proj"]


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("as_regex", [False, True])
def test_peft_adapter_loads_in_ours_with_identical_outputs(tmp_path, input_ids, use_dora, as_regex):
    targets = r".*\.(q_proj|v_proj|down_proj)" if as_regex else ["q_proj", "v_proj", "down_proj"]
    peft_config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.1, target_modules=targets, use_dora=use_dora)
    peft_model = get_peft_model(tiny_qwen2(), peft_config)
    randomize_adapters(peft_model, seed=3)
    peft_model.save_pretrained(str(tmp_path))
    theirs = logits(peft_model.eval(), input_ids)

    model = tiny_qwen2()
    config = apply_lora_from_pretrained(model, tmp_path)
    assert (config.dim, config.alpha, config.dropout, config.use_dora) == (4, 16, 0.1, use_dora)
    assert config.dropout_position == "pre"  # HF PEFT's position
    ours = logits(model.eval(), input_ids)
    assert (ours - theirs).abs().max().item() <= 1e-5
    assert not torch.allclose(ours, logits(tiny_qwen2(), input_ids), atol=1e-3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 6 * (3 if use_dora else 2)


def test_load_adapter_resumes_and_reports_mismatches(tmp_path, input_ids):
    config = PeftConfig(target_modules=["q_proj", "v_proj"], dim=4, use_dora=True)
    trained = tiny_llama()
    apply_lora(trained, config)
    randomize_adapters(trained)
    save_adapter(trained, tmp_path, config, base_model_name_or_path=None)

    fresh = tiny_llama()
    apply_lora(fresh, config)
    load_adapter(fresh, tmp_path)
    torch.testing.assert_close(logits(fresh, input_ids), logits(trained, input_ids), rtol=0, atol=0)

    other_rank = tiny_llama()
    apply_lora(other_rank, PeftConfig(target_modules=["q_proj", "v_proj"], dim=8, use_dora=True))
    with pytest.raises(PeftError, match=r"q_proj\.lora_A\.weight has shape \(4, 64\) but the model expects \(8, 64\)"):
        load_adapter(other_rank, tmp_path)

    more_targets = tiny_llama()
    apply_lora(more_targets, PeftConfig(target_modules=["q_proj", "v_proj", "k_proj"], dim=4, use_dora=True))
    with pytest.raises(PeftError, match=r"missing \['base_model\.model\.model\.layers\.0\.self_attn\.k_proj"):
        load_adapter(more_targets, tmp_path)
    load_adapter(more_targets, tmp_path, strict=False)  # resumes what matches, logs the rest

    with pytest.raises(PeftError, match="has no LoRA layers; call apply_lora"):
        load_adapter(tiny_llama(), tmp_path)


def test_apply_from_pretrained_checks_everything_before_touching_the_model(tmp_path):
    peft_model = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(str(tmp_path))
    weights = load_file(tmp_path / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    weights[key] = torch.zeros(32, 4)
    save_file(weights, tmp_path / "adapter_model.safetensors")
    model = tiny_llama()
    with pytest.raises(PeftError, match=rf"{key} has shape \(32, 4\) but the model expects \(64, 4\)"):
        apply_lora_from_pretrained(model, tmp_path)
    assert all(not n.count("lora_") for n, _ in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())

    hf = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**hf, "rank_pattern": {"q_proj": 8}}))
    with pytest.raises(PeftError, match=r"rank_pattern=\{'q_proj': 8\} not supported"):
        apply_lora_from_pretrained(model, tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({**hf, "r": 0}))
    with pytest.raises(PeftError, match=r"adapter_config\.json: peft\.dim"):
        apply_lora_from_pretrained(model, tmp_path)
    with pytest.raises(PeftError, match="adapter_config.json not found"):
        apply_lora_from_pretrained(model, tmp_path / "nowhere")


@pytest.mark.parametrize("use_dora", [False, True])
def test_pre_dropout_training_forward_matches_peft(tmp_path, input_ids, use_dora):
    # With dropout before A (PEFT's position) even train-mode outputs agree, mask for mask.
    peft_config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.3, target_modules=["q_proj", "o_proj"], use_dora=use_dora
    )
    peft_model = get_peft_model(tiny_qwen2(), peft_config)
    randomize_adapters(peft_model, seed=5)
    peft_model.save_pretrained(str(tmp_path))
    model = tiny_qwen2()
    apply_lora_from_pretrained(model, tmp_path)
    outputs = []
    for m in (peft_model, model):
        m.train()
        torch.manual_seed(11)
        with torch.no_grad():
            outputs.append(m(input_ids=input_ids).logits)
    assert (outputs[0] - outputs[1]).abs().max().item() <= 1e-5
    model.eval()
    assert not torch.allclose(outputs[1], logits(model, input_ids), atol=1e-4)  # dropout did act


def test_apply_peft_starts_from_an_existing_adapter(tmp_path, caplog):
    from automodel.components._peft import PeftConfig, apply_peft, save_adapter
    from automodel.components._peft.tests.conftest import logits, randomize_adapters, tiny_llama

    source = tiny_llama(seed=0)
    made = PeftConfig(target_modules=["q_proj", "v_proj"], dim=4, alpha=8)
    apply_peft(source, made)
    randomize_adapters(source)
    save_adapter(source, tmp_path / "adapter", made, base_model_name_or_path="tiny")

    target = tiny_llama(seed=0)
    with caplog.at_level("WARNING"):
        effective, names = apply_peft(target, PeftConfig(adapter_path=str(tmp_path / "adapter"), target_modules=["x"]))
    assert "ignoring peft.target_modules" in caplog.text
    assert (effective.dim, effective.alpha) == (4, 8) and len(names) == 4
    ids = torch.randint(0, 128, (2, 8), generator=torch.Generator().manual_seed(0))
    assert torch.equal(logits(source, ids), logits(target, ids))
    assert {n for n, p in target.named_parameters() if p.requires_grad} == {
        n for n, p in source.named_parameters() if p.requires_grad
    }
