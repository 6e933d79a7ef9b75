"""GGUF files: a real (tiny) GGUF written offline, converted once to an HF folder, cached, and loaded."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from transformers import LlamaForCausalLM

from automodel.components._transformers import (
    ModelLoadError,
    NeMoAutoModelForCausalLM,
    NeMoAutoTokenizer,
    _gguf,
    convert_gguf_to_hf,
    resolve_model_path,
)
from automodel.components._transformers.tests._tiny import CHAT_TEMPLATE, TEXT, logits, tiny_llama

IDS = torch.tensor([[5, 17, 33, 9, 100, 2, 64, 7, 120]])


@pytest.fixture(scope="module")
def gguf_logits(tiny_gguf: Path) -> torch.Tensor:
    """Logits of the model transformers loads straight from the GGUF file."""
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tiny_gguf.parent, gguf_file=tiny_gguf.name, dtype=torch.float32
    )
    return logits(model, IDS)


def test_tiny_gguf_round_trips_the_original_model(gguf_logits):
    # Checks the test fixture itself: our GGUF writer follows llama.cpp's layout exactly.
    assert torch.equal(gguf_logits, logits(tiny_llama(seed=1), IDS))


def test_convert_gives_a_plain_hf_folder_with_the_same_logits_and_tokenizer(tiny_gguf, gguf_logits, tmp_path):
    out = convert_gguf_to_hf(tiny_gguf, tmp_path / "hf")
    assert out == tmp_path / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf_source.json"} <= {p.name for p in out.iterdir()}
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "gguf_source.json").read_text())["size"] == tiny_gguf.stat().st_size
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".hf.tmp")] == []  # the temporary dir is gone

    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert type(model) is LlamaForCausalLM and not getattr(model, "is_quantized", False)
    assert model.config.tie_word_embeddings and model.dtype == torch.float32
    assert torch.equal(logits(model, IDS), gguf_logits)

    direct = transformers.AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    saved = transformers.AutoTokenizer.from_pretrained(out)
    assert saved(TEXT)["input_ids"] == direct(TEXT)["input_ids"]
    assert len(saved(TEXT)["input_ids"]) < len(TEXT)  # the merges are in use, not one token per byte
    assert saved.decode(saved(TEXT)["input_ids"]) == TEXT
    assert saved.eos_token == "<|im_end|>" and saved.chat_template == CHAT_TEMPLATE


def test_converted_model_trains(tiny_gguf, tmp_path):
    # The point of converting: transformers would refuse to save or train the GGUF-flagged model.
    model = transformers.AutoModelForCausalLM.from_pretrained(convert_gguf_to_hf(tiny_gguf, tmp_path / "hf"))
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    assert torch.isfinite(loss) and model.model.embed_tokens.weight.grad is not None
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "model.safetensors").is_file()


def test_resolve_converts_once_into_the_cache_and_reuses_it(tiny_gguf, automodel_home, monkeypatch):
    first = Path(resolve_model_path(tiny_gguf.parent, gguf_file=tiny_gguf.name))
    assert first == automodel_home / "gguf" / _gguf.gguf_cache_key(tiny_gguf)
    mtime = (first / "model.safetensors").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("converted a second time")

    monkeypatch.setattr(_gguf, "_convert_into", fail)
    assert Path(resolve_model_path(str(tiny_gguf))) == first  # the .gguf path itself: same file, same cache entry
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime


def test_from_pretrained_and_tokenizer_load_gguf_both_ways(tiny_gguf, gguf_logits, monkeypatch):
    for model in (
        NeMoAutoModelForCausalLM.from_pretrained(tiny_gguf),
        NeMoAutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name, torch_dtype="bf16"),
    ):
        assert type(model) is LlamaForCausalLM
        assert torch.allclose(
            logits(model, IDS).float(), gguf_logits, atol=0.05 if model.dtype == torch.bfloat16 else 0
        )
    monkeypatch.setenv("HOME", str(tiny_gguf.parent.parent))
    tokenizer = NeMoAutoTokenizer.from_pretrained(f"~/{tiny_gguf.parent.name}/{tiny_gguf.name}")
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2  # the GGUF has no pad id: pad falls back to eos


def test_cache_key_reads_head_and_tail_only(tiny_gguf, tmp_path):
    copy = tmp_path / "copy.gguf"
    shutil.copy(tiny_gguf, copy)
    assert _gguf.gguf_cache_key(copy) == _gguf.gguf_cache_key(tiny_gguf)
    with copy.open("ab") as f:
        f.write(b"\0")
    assert _gguf.gguf_cache_key(copy) != _gguf.gguf_cache_key(tiny_gguf)


def test_failed_conversion_leaves_nothing_behind(tiny_gguf, tmp_path, monkeypatch):
    def save_fails(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", save_fails)
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gguf_to_hf(tiny_gguf, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_convert_refuses_an_existing_incomplete_folder(tiny_gguf, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(ModelLoadError, match="the directory exists but holds no config.json"):
        convert_gguf_to_hf(tiny_gguf, tmp_path / "hf")


def test_missing_gguf_file_in_a_directory(tiny_gguf):
    with pytest.raises(ModelLoadError, match=r"gguf_file 'nope.gguf' in '.*' does not exist"):
        NeMoAutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file="nope.gguf")


def test_missing_gguf_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"GGUF file '.*missing.gguf' does not exist"):
        resolve_model_path(os.fspath(tmp_path / "missing.gguf"))


def test_unsupported_gguf_is_a_user_error(tmp_path):
    import gguf

    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "no-such-arch")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 4).numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="transformers cannot load GGUF file"):
        convert_gguf_to_hf(path, tmp_path / "hf")


def test_another_process_publishing_first_is_not_an_error(tiny_gguf, tmp_path, monkeypatch):
    target = tmp_path / "hf"

    def convert_while_another_process_wins(gguf_path, folder):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        target.mkdir()  # the other process's complete folder appears before our rename
        (target / "config.json").write_text('{"winner": true}')

    monkeypatch.setattr(_gguf, "_convert_into", convert_while_another_process_wins)
    assert convert_gguf_to_hf(tiny_gguf, target) == target
    assert json.loads((target / "config.json").read_text()) == {"winner": True}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
