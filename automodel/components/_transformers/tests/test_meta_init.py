"""`from_pretrained(..., init_device="meta")`: the model of the config, no weight read, the weights' folder recorded.

Loading the shards into such a model is the distributed component's job (tested there, on 2 ranks).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM

from automodel.components._transformers import ModelLoadError, NeMoAutoModelForCausalLM


def test_meta_init_builds_the_configured_model_without_weights(tiny_model_dir: Path):
    model = NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, init_device="meta")
    assert isinstance(model, LlamaForCausalLM)
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.automodel_weights_path == str(tiny_model_dir) == model.config._name_or_path
    assert model.dtype == torch.float32 and model.config._attn_implementation == "sdpa"
    assert model.model.embed_tokens.weight.shape == (128, 64) and len(model.model.layers) == 2
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as the config says
    assert NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, init_device="meta", dtype="bf16").dtype == (
        torch.bfloat16
    )


def test_meta_init_reads_no_weight(tiny_model_dir: Path, tmp_path: Path):
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")  # would fail if anything read it
    model = NeMoAutoModelForCausalLM.from_pretrained(tmp_path, init_device="meta", num_hidden_layers=1)
    assert len(model.model.layers) == 1  # config overrides still apply


def test_meta_init_resolves_a_hub_id_to_its_local_snapshot(tiny_model_dir: Path, tmp_path: Path):
    # The layout huggingface_hub leaves in its cache after a download (the conftest makes that cache empty/offline).
    repo = tmp_path / "hf_cache" / "models--acme--tiny-llama"
    snapshot = repo / "snapshots" / "0123abcd"
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    model = NeMoAutoModelForCausalLM.from_pretrained("acme/tiny-llama", init_device="meta")
    assert Path(model.automodel_weights_path) == snapshot
    with pytest.raises(ModelLoadError, match=r"could not load 'acme/missing' from the Hugging Face Hub"):
        NeMoAutoModelForCausalLM.from_pretrained("acme/missing", init_device="meta")


def test_meta_init_errors(tiny_model_dir: Path, tmp_path: Path):
    with pytest.raises(ModelLoadError, match=r"init_device='cuda' is not supported; use 'meta'"):
        NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, init_device="cuda")
    with pytest.raises(ModelLoadError, match=r"model options device_map are not supported with init_device='meta'"):
        NeMoAutoModelForCausalLM.from_pretrained(tiny_model_dir, init_device="meta", device_map="auto")
    shutil.copy(tiny_model_dir / "config.json", tmp_path / "config.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"init_device='meta' needs safetensors weights"):
        NeMoAutoModelForCausalLM.from_pretrained(tmp_path, init_device="meta")
