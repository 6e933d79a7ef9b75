"""One-line user errors for paths, hub ids and remote code."""

from __future__ import annotations

import json

import pytest

from automodel._shared.errors import UserError
from automodel.components._transformers import (
    ModelLoadError,
    NeMoAutoModelForCausalLM,
    NeMoAutoTokenizer,
    resolve_model_path,
)
from automodel.components._transformers.tests._tiny import tiny_config_dict

HUB_ID = "automodel-test/does-not-exist"


def test_model_load_error_is_a_user_error():
    assert issubclass(ModelLoadError, UserError)


@pytest.mark.parametrize("name", ["./nope", "/definitely/not/here", "~/not-here-either", "a/b/c"])
def test_missing_local_path(name):
    with pytest.raises(ModelLoadError, match=r"model path '.*' does not exist; point pretrained_model_name_or_path"):
        NeMoAutoModelForCausalLM.from_pretrained(name)


def test_org_name_shape_is_local_when_its_first_part_is_a_local_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelLoadError, match=r"^model path 'models/x' does not exist"):
        NeMoAutoModelForCausalLM.from_pretrained("models/x")


def test_missing_default_smollm2_says_how_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no models/ directory here at all
    with pytest.raises(ModelLoadError, match=r"'models/SmolLM2-135M-Instruct' does not exist; run `automodel prepare"):
        NeMoAutoModelForCausalLM.from_pretrained("models/SmolLM2-135M-Instruct")
    with pytest.raises(ModelLoadError, match="run `automodel prepare smollm2`"):
        NeMoAutoTokenizer.from_pretrained("./models/SmolLM2-135M-Instruct/")


def test_directory_without_config_json(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model directory '.*' has no config.json; expected a Hugging Face"):
        NeMoAutoModelForCausalLM.from_pretrained(tmp_path)


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="is a file; expected a model directory"):
        resolve_model_path(tmp_path / "config.json")


def test_directory_without_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config_dict()))
    with pytest.raises(ModelLoadError, match=r"model directory '.*' has no weights: .*Expected model.safetensors"):
        NeMoAutoModelForCausalLM.from_pretrained(tmp_path)


def test_hub_id_is_returned_unchanged():
    assert resolve_model_path(HUB_ID) == HUB_ID


@pytest.mark.parametrize(
    "load",
    [
        NeMoAutoModelForCausalLM.from_pretrained,
        NeMoAutoModelForCausalLM.from_config,
        NeMoAutoTokenizer.from_pretrained,
        lambda name: NeMoAutoModelForCausalLM.from_pretrained(name, gguf_file="model.Q4_0.gguf"),
    ],
)
def test_offline_hub_id(load):
    pattern = (
        rf"^could not load '{HUB_ID}' from the Hugging Face Hub: .+\. If you are offline, point "
        r"pretrained_model_name_or_path at a local directory; for gated models set HF_TOKEN$"
    )
    with pytest.raises(ModelLoadError, match=pattern):
        load(HUB_ID)


def test_custom_code_needs_trust_remote_code(tmp_path):
    config = {
        "model_type": "automodel-custom",
        "auto_map": {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"},
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ModelLoadError,
        match=r"contains custom model code; if you trust that code, set trust_remote_code: true .*--trust-remote-code",
    ):
        NeMoAutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(
        ModelLoadError,
        match=r"contains custom model code; if you trust that code, set trust_remote_code: true .*--trust-remote-code",
    ):
        NeMoAutoModelForCausalLM.from_config(tmp_path)
