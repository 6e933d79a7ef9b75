from __future__ import annotations

from pathlib import Path

import pytest

from automodel.components._transformers.tests._tiny import tiny_llama, tiny_tokenizer, write_tiny_gguf


@pytest.fixture(autouse=True)
def automodel_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own GGUF cache, so no test sees another's conversions."""
    home = tmp_path / "automodel_home"
    monkeypatch.setenv("AUTOMODEL_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def hub_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may reach the Hugging Face Hub: force offline mode and an empty hub cache."""
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE at import time, so patch the constant as well as the environment.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny Llama with a tokenizer that has no pad token."""
    folder = tmp_path_factory.mktemp("tiny_llama")
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer(pad=False).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real F32 GGUF file of the tiny Llama (seed 1) and the tiny tokenizer."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.F32.gguf", tiny_llama(seed=1))
