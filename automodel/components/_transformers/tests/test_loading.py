"""from_config / from_pretrained / the tokenizer on tiny local models: dtypes, attention, overrides, reload."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automodel.components._transformers import ModelLoadError, NeMoAutoModelForCausalLM, NeMoAutoTokenizer
from automodel.components._transformers.tests._tiny import TEXT, logits, tiny_config_dict, tiny_llama

IDS = torch.tensor([[5, 17, 33, 9, 100, 2, 64, 7]])


# --- from_config ---------------------------------------------------------------------------------------------------


def test_from_config_dict_builds_random_fp32_model_with_sdpa():
    model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict())
    assert isinstance(model, LlamaForCausalLM)
    assert model.dtype == torch.float32
    assert model.config._attn_implementation == "sdpa"
    assert len(model.model.layers) == 2 and model.config.vocab_size == 128
    assert logits(model, IDS).shape == (1, 8, 128)


def test_from_config_kwargs_override_fields_and_derived_fields_follow():
    model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), num_hidden_layers=1, hidden_size=32)
    assert len(model.model.layers) == 1
    # The override goes through the config constructor, so head_dim is derived from the new hidden size.
    assert model.config.head_dim == 8 and model.model.embed_tokens.weight.shape == (128, 32)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, torch.float32),
        ({"torch_dtype": "bf16"}, torch.bfloat16),
        ({"dtype": "bfloat16"}, torch.bfloat16),
        ({"torch_dtype": torch.bfloat16}, torch.bfloat16),
        ({"dtype": "fp32"}, torch.float32),
        ({"torch_dtype": "torch.float16"}, torch.float16),
        ({"torch_dtype": "bf16", "dtype": torch.bfloat16}, torch.bfloat16),
    ],
)
def test_from_config_dtype_choices(kwargs, expected):
    assert NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), **kwargs).dtype == expected


def test_from_config_auto_dtype_uses_the_dtype_the_config_names():
    assert NeMoAutoModelForCausalLM.from_config({**tiny_config_dict(), "dtype": "bfloat16"}, dtype="auto").dtype == (
        torch.bfloat16
    )
    assert NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), dtype="auto").dtype == torch.float32


def test_from_config_accepts_config_object_dir_and_json_file_without_mutating_the_object(tmp_path):
    fields = tiny_config_dict()
    fields.pop("model_type")
    config = LlamaConfig(**fields)
    model = NeMoAutoModelForCausalLM.from_config(config, num_hidden_layers=1, dtype="bf16")
    assert len(model.model.layers) == 1
    assert config.num_hidden_layers == 2 and config.dtype is None  # the caller's config is left alone
    config.save_pretrained(tmp_path)
    assert len(NeMoAutoModelForCausalLM.from_config(tmp_path).model.layers) == 2
    assert len(NeMoAutoModelForCausalLM.from_config(tmp_path / "config.json", num_hidden_layers=3).model.layers) == 3


def test_from_config_path_override_keeps_a_derived_head_dim_derived(tmp_path):
    fields = tiny_config_dict()
    fields.pop("model_type")
    LlamaConfig(**fields).save_pretrained(tmp_path)
    model = NeMoAutoModelForCausalLM.from_config(tmp_path / "config.json", hidden_size=32)
    assert model.config.head_dim == 8 and model.model.layers[0].self_attn.q_proj.weight.shape == (32, 32)
    explicit = NeMoAutoModelForCausalLM.from_config(LlamaConfig(**fields), hidden_size=32, head_dim=16)
    assert explicit.config.head_dim == 16 and explicit.model.layers[0].self_attn.q_proj.weight.shape == (64, 32)


def test_from_config_depth_override_resizes_a_saved_layer_types_list(tmp_path):
    qwen2 = {**tiny_config_dict(), "model_type": "qwen2", "num_hidden_layers": 4}
    NeMoAutoModelForCausalLM.from_config(qwen2).config.save_pretrained(tmp_path)  # config.json lists 4 layer types
    model = NeMoAutoModelForCausalLM.from_config(tmp_path, num_hidden_layers=2)
    assert len(model.model.layers) == 2 and model.config.layer_types == ["full_attention"] * 2


def test_from_config_warns_about_unknown_keys_with_a_suggestion(caplog):
    with caplog.at_level(logging.WARNING):
        model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), num_hiden_layers=1)
    assert len(model.model.layers) == 2
    assert "'num_hiden_layers' is not a field of LlamaConfig (did you mean 'num_hidden_layers'?)" in caplog.text


def test_from_config_dict_needs_model_type():
    fields = tiny_config_dict()
    fields.pop("model_type")
    with pytest.raises(ModelLoadError, match="model config dict needs a model_type key"):
        NeMoAutoModelForCausalLM.from_config(fields)


def test_from_config_invalid_field_combination_is_a_user_error():
    with pytest.raises(
        ModelLoadError, match=r"^invalid model config for 'llama': The hidden size \(66\) is not a multiple"
    ):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), hidden_size=66)


def test_from_config_unknown_model_type():
    with pytest.raises(ModelLoadError, match="transformers does not know the model type of 'no-such-arch'"):
        NeMoAutoModelForCausalLM.from_config({"model_type": "no-such-arch"})


# --- dtype errors and warnings -------------------------------------------------------------------------------------


def test_bad_dtype_string_lists_the_choices():
    with pytest.raises(ModelLoadError, match=r"torch_dtype='float8' is not a dtype .* expected one of: float32, fp32"):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), torch_dtype="float8")


def test_integer_dtype_is_refused():
    with pytest.raises(ModelLoadError, match="dtype=torch.int64 is not a floating-point dtype"):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), dtype=torch.int64)


def test_conflicting_torch_dtype_and_dtype_are_refused():
    with pytest.raises(ModelLoadError, match="torch_dtype='bf16' and dtype='float32' disagree; set only one"):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), torch_dtype="bf16", dtype="float32")


def test_fp16_without_cuda_warns(caplog, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), torch_dtype="fp16")
    assert "torch_dtype=float16 without CUDA" in caplog.text


# --- attention implementation --------------------------------------------------------------------------------------


def test_eager_attention_on_request():
    assert NeMoAutoModelForCausalLM.from_config(
        tiny_config_dict(), attn_implementation="eager"
    ).config._attn_implementation == ("eager")


def test_sdpa_falls_back_to_eager_with_a_warning_when_the_model_lacks_it(monkeypatch, caplog):
    monkeypatch.setattr(LlamaForCausalLM, "_supports_sdpa", False)
    with caplog.at_level(logging.WARNING):
        model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict())
    assert model.config._attn_implementation == "eager"
    assert "does not support attn_implementation='sdpa'; using 'eager'" in caplog.text


def test_missing_flash_attention_falls_back_to_sdpa(caplog):
    # No flash-attn package on CPU machines: a reference config asking for it still runs, with a warning.
    with caplog.at_level(logging.WARNING):
        model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), attn_implementation="flash_attention_2")
    assert model.config._attn_implementation == "sdpa"
    assert "attn_implementation='flash_attention_2' is unavailable here" in caplog.text


def test_unknown_attention_is_a_user_error():
    with pytest.raises(
        ModelLoadError, match=r"^attn_implementation=.bogus. is not supported; use .sdpa. \(the default\), .eager."
    ):
        NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), attn_implementation="bogus")


def test_reference_only_kernel_options_are_ignored_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING):
        model = NeMoAutoModelForCausalLM.from_config(tiny_config_dict(), use_liger_kernel=True, sdpa_method=["flash"])
    assert isinstance(model, LlamaForCausalLM)
    assert "use_liger_kernel=True is ignored" in caplog.text and "sdpa_method=['flash'] is ignored" in caplog.text


# --- from_pretrained -----------------------------------------------------------------------------------------------


def test_from_pretrained_gives_identical_logits_after_reload(tiny_model_dir):
    model = NeMoAutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    assert type(model) is LlamaForCausalLM  # a plain transformers model, not a wrapper
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert torch.equal(logits(model, IDS), logits(tiny_llama(), IDS))


def test_from_pretrained_default_is_fp32_even_for_a_bf16_checkpoint(tmp_path):
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path)
    assert NeMoAutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.float32
    assert NeMoAutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto").dtype == torch.bfloat16


@pytest.mark.parametrize(("name", "expected"), [("bf16", torch.bfloat16), ("float16", torch.float16)])
def test_from_pretrained_dtype_strings(tiny_model_dir, name, expected):
    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=name, attn_implementation="eager")
    assert model.dtype == expected and model.config._attn_implementation == "eager"


def test_from_pretrained_expands_home(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(tiny_model_dir.parent))
    model = NeMoAutoModelForCausalLM.from_pretrained(f"~/{tiny_model_dir.name}")
    assert torch.equal(logits(model, IDS), logits(tiny_llama(), IDS))


def test_from_pretrained_passes_other_kwargs_to_transformers(tiny_model_dir):
    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, use_cache=False)
    assert model.config.use_cache is False


# --- tokenizer -----------------------------------------------------------------------------------------------------


def test_tokenizer_without_pad_gets_eos_as_pad(tiny_model_dir, caplog):
    with caplog.at_level(logging.INFO):
        tokenizer = NeMoAutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.pad_token == "<|im_end|>" and tokenizer.pad_token_id == 2 == tokenizer.eos_token_id
    assert "no pad token; using eos '<|im_end|>' as pad" in caplog.text
    assert tokenizer.decode(tokenizer(TEXT)["input_ids"]) == TEXT


def test_tokenizer_missing_files_is_a_user_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict()))
    with pytest.raises(ModelLoadError, match="has no tokenizer files"):
        NeMoAutoTokenizer.from_pretrained(tmp_path)


# --- the top-level package -----------------------------------------------------------------------------------------


def test_top_level_aliases_are_lazy():
    code = (
        "import sys, automodel\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'automodel import is not light'\n"
        "from automodel.components._transformers import NeMoAutoModelForCausalLM, NeMoAutoTokenizer\n"
        "assert automodel.NeMoAutoModelForCausalLM is NeMoAutoModelForCausalLM\n"
        "assert automodel.NeMoAutoTokenizer is NeMoAutoTokenizer\n"
        "print(automodel.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0.1.0"


def test_top_level_unknown_attribute():
    import automodel

    with pytest.raises(AttributeError, match="has no attribute 'AutoModelForCausalLM'"):
        automodel.AutoModelForCausalLM  # noqa: B018


def test_model_path_is_a_path_object(tiny_model_dir):
    assert isinstance(NeMoAutoModelForCausalLM.from_pretrained(Path(tiny_model_dir)), LlamaForCausalLM)


def test_tokenizer_only_folder_loads(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from automodel.components._transformers import NeMoAutoTokenizer

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<unk>": 1, "hi": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    assert not (tmp_path / "config.json").exists()
    assert NeMoAutoTokenizer.from_pretrained(tmp_path).pad_token_id == 0
