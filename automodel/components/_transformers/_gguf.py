"""GGUF -> Hugging Face folder conversion, done once per file and cached.

transformers loads a GGUF by dequantising it into a dense model that it still flags as quantised: it refuses to
`save_pretrained` it and HF-style trainers refuse to train it. The weights are plain tensors by then, so we drop the
flags, save a normal safetensors folder, and train from that folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from automodel.components._transformers._errors import ModelLoadError
from automodel.components._transformers._paths import automodel_home, short_reason

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20  # 1 MiB: the head and tail hashed for the cache key
SOURCE_FILE = "gguf_source.json"  # written into every converted folder: where it came from


def gguf_cache_key(gguf_path: str | os.PathLike) -> str:
    """sha256 of (size, first MiB, last MiB): cheap on multi-GB files, and changes when the file is replaced."""
    path = Path(gguf_path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"gguf:{size}:".encode())
    with path.open("rb") as f:
        digest.update(f.read(_CHUNK))
        f.seek(max(size - _CHUNK, 0))
        digest.update(f.read(_CHUNK))
    return digest.hexdigest()


def gguf_cache_dir(gguf_path: str | os.PathLike) -> Path:
    """`$AUTOMODEL_HOME/gguf/<key>/`, where `cached_convert_gguf` keeps the HF folder of this GGUF file."""
    return automodel_home() / "gguf" / gguf_cache_key(gguf_path)


def is_complete(folder: Path) -> bool:
    # Folders are published by rename only once fully written, so config.json alone proves completeness.
    return (folder / "config.json").is_file()


def cached_convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """The HF folder converted from `gguf_path`, converting on the first call only."""
    output_dir = gguf_cache_dir(gguf_path)
    if is_complete(output_dir):
        logger.info("Using the HF folder converted earlier from %s: %s", gguf_path, output_dir)
        return output_dir
    return convert_gguf_to_hf(gguf_path, output_dir)


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """A file lock, so that several processes (ranks) converting the same file wait for one conversion."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def convert_gguf_to_hf(gguf_path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> Path:
    """Convert a GGUF file into a Hugging Face folder (fp32 safetensors + tokenizer) and return the folder.

    `output_dir` defaults to the cache `$AUTOMODEL_HOME/gguf/<key>/`. It is published by atomic rename, so it
    either holds a complete conversion or does not exist; an existing complete folder is returned as is.
    """
    gguf_path = Path(os.path.expanduser(os.fspath(gguf_path))).resolve()
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {str(gguf_path)!r} does not exist; check the path")
    output_dir = Path(os.path.expanduser(os.fspath(output_dir))) if output_dir else gguf_cache_dir(gguf_path)
    with _exclusive(output_dir.parent / f".{output_dir.name}.lock"):
        if is_complete(output_dir):
            return output_dir
        if output_dir.exists():
            raise ModelLoadError(
                f"cannot convert {gguf_path.name} into {str(output_dir)!r}: the directory exists but holds no "
                "config.json; remove it or choose another output directory"
            )
        tmp_dir = output_dir.parent / f".{output_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            start = time.perf_counter()
            _convert_into(gguf_path, tmp_dir)
            try:
                os.rename(tmp_dir, output_dir)
            except OSError:
                # Another process published first (file locks do not hold on every filesystem): use its result.
                if not is_complete(output_dir):
                    raise
            logger.info("Converted %s in %.1f s into %s", gguf_path.name, time.perf_counter() - start, output_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
    return output_dir


def _convert_into(gguf_path: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("Converting %s into a Hugging Face folder (once; later loads use the cache)", gguf_path)
    try:
        # fp32: dequantised weights are exact in fp32 and are the master weights for training.
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    except (ValueError, KeyError, NotImplementedError) as error:
        # transformers raises these for architectures or quantisation types its GGUF loader does not know.
        raise ModelLoadError(
            f"transformers cannot load GGUF file {str(gguf_path)!r}: {short_reason(error)}. Use the model's Hugging "
            "Face repository instead, or a GGUF of a supported architecture"
        ) from error
    # The weights are dense now: clear the flags that make transformers refuse to save or train the model.
    model.hf_quantizer = None  # type: ignore[assignment]  # nn.Module's __setattr__ typing; a plain attribute
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError) as error:
        # The model is still useful with the tokenizer of its original repository, so this is not fatal.
        logger.warning(
            "Could not convert the tokenizer of %s (%s); load a tokenizer from the model's original repository",
            gguf_path.name,
            short_reason(error),
        )
    else:
        tokenizer.save_pretrained(folder)
    source = {"gguf_file": str(gguf_path), "size": gguf_path.stat().st_size, "key": gguf_cache_key(gguf_path)}
    (folder / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
