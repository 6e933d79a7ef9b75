"""`NeMoAutoModelForCausalLM` and `NeMoAutoTokenizer`: transformers' auto classes with our path handling, defaults
and one-line errors. They return plain transformers objects, not wrappers."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from automodel.components._transformers._dtype import parse_dtype
from automodel.components._transformers._errors import ModelLoadError
from automodel.components._transformers._paths import (
    hub_error,
    hub_errors,
    looks_local,
    resolve_model_path,
    short_reason,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

# Options of the reference system's loader that select its own kernels. We use transformers' implementations, so a
# config that sets them still runs; a warning says they have no effect.
_IGNORED_NEMO_OPTIONS = ("use_liger_kernel", "use_sdpa_patching", "sdpa_method", "force_hf")


def _drop_ignored_options(kwargs: dict[str, Any]) -> None:
    for key in _IGNORED_NEMO_OPTIONS:
        if key in kwargs:
            logger.warning("model option %s=%r is ignored: automodel uses transformers' own kernels", key, kwargs[key])
            del kwargs[key]


@contextlib.contextmanager
def _load_errors(name: str, from_hub: bool) -> Iterator[None]:
    """Turn the load-time exceptions known to be user mistakes into one-line `ModelLoadError`s."""
    try:
        yield
    except ModelLoadError:
        raise
    except ValueError as error:
        message = str(error)
        if "trust_remote_code" in message:
            raise ModelLoadError(
                f"{name!r} contains custom model code; if you trust that code, set trust_remote_code: true in the "
                "model section and run with --trust-remote-code (a config alone cannot turn it on)"
            ) from error
        if "does not recognize this architecture" in message or "Unrecognized model identifier" in message:
            raise ModelLoadError(
                f"transformers does not know the model type of {name!r}: {short_reason(error)}. Check config.json's "
                "model_type, or upgrade transformers (pip install -U transformers)"
            ) from error
        if message.startswith("Specified `attn_implementation="):
            requested = message.split('"')[1]
            raise ModelLoadError(
                f"attn_implementation={requested!r} is not supported; use 'sdpa' (the default), 'eager', or "
                "'flash_attention_2' (CUDA with the flash-attn package)"
            ) from error
        raise
    except _config_validation_errors() as error:
        # transformers 5 configs are validated dataclasses; the last line holds the actual complaint.
        reason = str(error).strip().splitlines()[-1].strip().removeprefix("ValueError: ")
        raise ModelLoadError(
            f"invalid model config for {name!r}: {reason}; fix the model section or config.json"
        ) from error
    except hub_errors() as error:
        if from_hub:
            raise hub_error(name, error) from error
        if "no file named" in str(error).lower():
            raise ModelLoadError(
                f"model directory {name!r} has no weights: {short_reason(error)}. Expected model.safetensors "
                "(or sharded model-*.safetensors with an index) as written by save_pretrained"
            ) from error
        raise


def _config_validation_errors() -> tuple[type[BaseException], ...]:
    try:
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:  # older huggingface_hub: configs are not validated dataclasses
        return ()
    return (StrictDataclassError,)


def _with_attn_fallback(load: Callable[[str | None], Any], attn_implementation: str | None) -> Any:
    """Call `load(attn)`; fall back from sdpa to eager and from an absent flash-attn to sdpa, with a warning."""
    try:
        return load(attn_implementation)
    except ValueError as error:
        if attn_implementation == "sdpa" and "scaled_dot_product_attention" in str(error):
            logger.warning("This model does not support attn_implementation='sdpa'; using 'eager' instead")
            return load("eager")
        raise
    except ImportError as error:
        if attn_implementation is not None and attn_implementation.startswith("flash_attention"):
            logger.warning(
                "attn_implementation=%r is unavailable here (%s); using 'sdpa' instead",
                attn_implementation,
                short_reason(error),
            )
            return _with_attn_fallback(load, "sdpa")
        raise


def _log_loaded(model: PreTrainedModel, source: str) -> None:
    num_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Loaded %s from %s: %.1fM parameters, %s, attention %s",
        type(model).__name__,
        source,
        num_params / 1e6,
        model.dtype,
        getattr(model.config, "_attn_implementation", None),
    )


class NeMoAutoModelForCausalLM:
    """Loads causal LMs from a local folder, a GGUF file or a Hub id (`from_pretrained`) or builds a randomly
    initialised one from a config (`from_config`). Named after the reference system's class so its configs run."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *model_args: Any,
        gguf_file: str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        init_device: str | None = None,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """The model at `pretrained_model_name_or_path`, in float32 unless `torch_dtype`/`dtype` says otherwise.

        `kwargs` go to `transformers.AutoModelForCausalLM.from_pretrained` (revision, token, device_map...).
        `init_device="meta"` builds the model from its config on the meta device without reading any weight, and
        records the safetensors folder (`meta_weights_path(model)`; a hub id resolves to its local snapshot): the
        distributed component's `parallelize_model(..., weights_path=...)` then loads only each rank's shards.
        """
        from transformers import AutoModelForCausalLM

        _drop_ignored_options(kwargs)
        resolved_dtype = parse_dtype(torch_dtype, dtype)
        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        path = resolve_model_path(name, gguf_file)
        from_hub = path == name and not looks_local(name)
        if init_device is not None:
            if init_device != "meta":
                raise ModelLoadError(
                    f"init_device={init_device!r} is not supported; use 'meta' (build without weights, each rank "
                    "loads its shards after parallelization) or leave it unset"
                )
            if model_args:
                raise ModelLoadError("positional model arguments cannot be combined with init_device='meta'")
            return _build_on_meta(name, path, from_hub, resolved_dtype, attn_implementation, trust_remote_code, kwargs)

        def load(attn: str | None) -> PreTrainedModel:
            return AutoModelForCausalLM.from_pretrained(
                path,
                *model_args,
                dtype=resolved_dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
                **kwargs,
            )

        with _load_errors(name, from_hub):
            model = _with_attn_fallback(load, attn_implementation)
        _log_loaded(model, path)
        return model

    @classmethod
    def from_config(
        cls,
        config: PretrainedConfig | Mapping[str, Any] | str | os.PathLike,
        *,
        torch_dtype: torch.dtype | str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> PreTrainedModel:
        """A randomly initialised model (pretraining) from `config`: a `PretrainedConfig`, a dict with `model_type`,
        a folder or config.json path, or a Hub id. `kwargs` override config fields (`num_hidden_layers=2`)."""
        from transformers import AutoModelForCausalLM

        _drop_ignored_options(kwargs)
        resolved_dtype = parse_dtype(torch_dtype, dtype)
        built = build_config(config, trust_remote_code=trust_remote_code, **kwargs)
        if resolved_dtype == "auto":  # nothing to load, so "auto" can only mean the dtype the config names
            config_dtype = getattr(built, "dtype", None)
            resolved_dtype = parse_dtype(None, config_dtype) if config_dtype is not None else torch.float32
        name = getattr(built, "model_type", type(built).__name__)

        def load(attn: str | None) -> PreTrainedModel:
            # A fresh copy per attempt: transformers writes the chosen dtype and attention into the config.
            return AutoModelForCausalLM.from_config(
                copy.deepcopy(built),
                dtype=resolved_dtype,
                attn_implementation=attn,
                trust_remote_code=trust_remote_code,
            )

        with _load_errors(name, from_hub=False):
            model = _with_attn_fallback(load, attn_implementation)
        _log_loaded(model, f"a {name} config (random init)")
        return model


# Where a model built on the meta device finds its weights: `meta_weights_path(model)`, which the recipe passes to
# the distributed component's loader.
WEIGHTS_PATH_ATTR = "automodel_weights_path"


def uses_flash_attention(model: Any) -> bool:
    """Whether the model runs a flash-attention kernel (packed batches then need its varlen boundaries)."""
    return "flash" in str(getattr(getattr(model, "config", None), "_attn_implementation", "") or "")


def meta_weights_path(model: Any) -> str | None:
    """The safetensors folder of a model built with `init_device="meta"` (a hub id resolved to its snapshot)."""
    return getattr(model, WEIGHTS_PATH_ATTR, None)


_HUB_DOWNLOAD_OPTIONS = ("revision", "token", "cache_dir", "force_download", "local_files_only")


def _build_on_meta(
    name: str,
    path: str,
    from_hub: bool,
    dtype: torch.dtype | str,
    attn_implementation: str | None,
    trust_remote_code: bool,
    kwargs: dict[str, Any],
) -> PreTrainedModel:
    """The model of `path`'s config on the meta device, with `model.automodel_weights_path` set to its folder."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hub_options = {key: kwargs.pop(key) for key in _HUB_DOWNLOAD_OPTIONS if key in kwargs}
    if from_hub:
        # Every rank reads the files itself, so they must be local: the snapshot (downloaded once, then cached).
        from huggingface_hub import snapshot_download

        try:
            path = snapshot_download(repo_id=name, allow_patterns=["*.json", "*.safetensors"], **hub_options)
        except hub_errors() as error:
            raise hub_error(name, error) from error
    folder = Path(path)
    if not any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json")):
        raise ModelLoadError(
            f"init_device='meta' needs safetensors weights, and {name!r} has no model.safetensors or "
            "model.safetensors.index.json; re-save the model with save_pretrained, or drop init_device"
        )
    with _load_errors(name, from_hub):
        config, unused = AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, return_unused_kwargs=True, **kwargs
        )
    if unused:
        raise ModelLoadError(
            f"model options {', '.join(sorted(unused))} are not supported with init_device='meta' (nothing is loaded "
            "until the model is parallelized); remove them or drop init_device"
        )
    if dtype == "auto":
        config_dtype = getattr(config, "dtype", None)
        dtype = parse_dtype(None, config_dtype) if config_dtype is not None else torch.float32

    def load(attn: str | None) -> PreTrainedModel:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(
                copy.deepcopy(config), dtype=dtype, attn_implementation=attn, trust_remote_code=trust_remote_code
            )

    with _load_errors(name, from_hub):
        model = _with_attn_fallback(load, attn_implementation)
    model.config._name_or_path = path
    setattr(model, WEIGHTS_PATH_ATTR, path)
    logger.info(
        "Built %s on the meta device (%.1fM parameters, %s); weights are read from %s after parallelization",
        type(model).__name__,
        sum(p.numel() for p in model.parameters()) / 1e6,
        model.dtype,
        path,
    )
    return model


def build_config(
    config: PretrainedConfig | Mapping[str, Any] | str | os.PathLike,
    *,
    trust_remote_code: bool = False,
    **overrides: Any,
) -> PretrainedConfig:
    """A transformers config from any of the forms `from_config` accepts, with `overrides` applied.

    Overrides go through the config's constructor (`AutoConfig.for_model`), so that fields derived from them follow;
    only remote-code configs, which `for_model` cannot rebuild, get plain attribute assignment.
    """
    from transformers import AutoConfig, PretrainedConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if hasattr(config, "to_dict") and not isinstance(config, (Mapping, PretrainedConfig)):
        config = config.to_dict()  # a ConfigNode from the config component, duck-typed
    if isinstance(config, (str, os.PathLike)):
        config = _load_config(os.path.expanduser(os.fspath(config)), trust_remote_code)
    if isinstance(config, PretrainedConfig):
        _check_keys(type(config), overrides, "override")
        if not overrides:
            return copy.deepcopy(config)
        if config.model_type not in CONFIG_MAPPING:
            built = copy.deepcopy(config)
            for key, value in overrides.items():
                setattr(built, key, value)
            return built
        fields = {**config.to_dict(), "model_type": config.model_type}
    elif isinstance(config, Mapping):
        fields = dict(config)
    else:
        raise ModelLoadError(
            f"model config must be a PretrainedConfig, a dict with model_type, a config.json path or a Hub id; got "
            f"{type(config).__name__}"
        )
    model_type = fields.pop("model_type", None)
    if not model_type:
        raise ModelLoadError(
            f"model config dict needs a model_type key (e.g. model_type: llama); got keys {sorted(fields)}"
        )
    with _load_errors(str(model_type), from_hub=False):
        built = AutoConfig.for_model(model_type, **_merge_overrides(fields, overrides))
    if not isinstance(config, PretrainedConfig):  # a config object's own fields are known to be valid
        _check_keys(type(built), {**fields, **overrides}, "config")
    return built


def _load_config(name: str, trust_remote_code: bool) -> PretrainedConfig | dict[str, Any]:
    """The config at a config.json path (as a dict), in a model folder, or of a Hub id."""
    from transformers import AutoConfig

    if os.path.isfile(name):
        try:
            return json.loads(Path(name).read_text())
        except json.JSONDecodeError as error:
            raise ModelLoadError(f"config file {name!r} is not valid JSON: {error}") from error
    path = resolve_model_path(name)
    with _load_errors(name, from_hub=path == name and not looks_local(name)):
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)


def _merge_overrides(fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`fields` updated with `overrides`, re-deriving the fields a saved config stores explicitly but that follow
    from the overridden ones: head_dim (hidden_size // num_attention_heads) and a uniform layer_types list."""
    merged = {**fields, **overrides}
    hidden, heads = fields.get("hidden_size"), fields.get("num_attention_heads")
    head_dim_was_derived = (
        isinstance(hidden, int) and isinstance(heads, int) and fields.get("head_dim") == hidden // heads
    )
    if head_dim_was_derived and "head_dim" not in overrides and {"hidden_size", "num_attention_heads"} & set(overrides):
        merged["head_dim"] = merged["hidden_size"] // merged["num_attention_heads"]
    layer_types = fields.get("layer_types")
    stale_depth = "num_hidden_layers" in overrides and "layer_types" not in overrides
    if stale_depth and isinstance(layer_types, list) and len(set(layer_types)) == 1:
        # One kind of layer throughout: extend or cut the list to the new depth.
        merged["layer_types"] = layer_types[:1] * merged["num_hidden_layers"]
    return merged


# Keys a config.json commonly carries that are not constructor fields but are harmless.
_METADATA_KEYS = {"architectures", "transformers_version", "torch_dtype", "_name_or_path", "auto_map", "rope_scaling"}


def _check_keys(config_class: type, keys: Mapping[str, Any], what: str) -> None:
    """Warn about keys that are not fields of `config_class`: likely typos that would otherwise do nothing."""
    if not dataclasses.is_dataclass(config_class):  # remote-code configs: no reliable list of fields
        return
    known = {field.name for field in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))
    for key in keys:
        if key not in known and key not in _METADATA_KEYS:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            logger.warning(
                "model %s key %r is not a field of %s%s; it is kept but probably has no effect",
                what,
                key,
                config_class.__name__,
                hint,
            )


class NeMoAutoTokenizer:
    """`transformers.AutoTokenizer` with the model loader's path handling (GGUF, `~`) and a pad token always set."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, gguf_file: str | None = None, **kwargs: Any
    ) -> PreTrainedTokenizerBase:
        """The tokenizer at `pretrained_model_name_or_path`; pad falls back to eos when the tokenizer has none."""
        from transformers import AutoTokenizer

        name = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        path = resolve_model_path(name, gguf_file, require_config=False)  # a tokenizer-only folder is fine
        from_hub = path == name and not looks_local(name)
        with _load_errors(name, from_hub):
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
            except (OSError, TypeError, ValueError) as error:
                if from_hub or not _lacks_tokenizer_files(path):
                    raise
                raise ModelLoadError(
                    f"model directory {name!r} has no tokenizer files (tokenizer.json, tokenizer_config.json...); "
                    "copy them from the model's original repository, or set the tokenizer's path explicitly"
                ) from error
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            logger.info("Tokenizer has no pad token; using eos %r as pad", tokenizer.eos_token)
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer


def _lacks_tokenizer_files(path: str) -> bool:
    names = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model", "vocab.txt")
    return not any((Path(path) / name).is_file() for name in names)
