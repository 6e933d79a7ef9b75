"""Adapters in the HF PEFT folder format: ``adapter_model.safetensors`` + ``adapter_config.json``.

Keys follow HF PEFT 0.21 (``base_model.model.<module>.lora_A.weight``, ``...lora_B.weight`` and, for DoRA,
``...lora_magnitude_vector``), so ``peft.PeftModel.from_pretrained(base, dir)`` loads our adapters and we load its.
Our own options that PEFT does not know live in ``automodel_peft.json``: PEFT warns about unknown keys in
``adapter_config.json``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from automodel.components._peft._apply import apply_lora, lora_modules
from automodel.components._peft._config import PeftConfig
from automodel.components._peft._errors import PeftError
from automodel.components._peft._layer import adapter_parameters
from automodel.components._peft._matching import select_by_regex, select_linear_modules

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
EXTRAS_NAME = "automodel_peft.json"
PEFT_KEY_PREFIX = "base_model.model."
# Name parts added by torch.compile, activation checkpointing and FSDP1 wrappers; not part of the HF module path.
_WRAPPER_PARTS = ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module.")
_EXTRA_FIELDS = ("dropout_position", "lora_A_init", "lora_dtype")
_NUM_LISTED = 5


def _hf_name(name: str) -> str:
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def _adapter_params(model: nn.Module) -> dict[str, nn.Parameter]:
    params = {}
    for name, module in lora_modules(model).items():
        for suffix, param in adapter_parameters(module).items():
            params[f"{PEFT_KEY_PREFIX}{_hf_name(name)}.{suffix}"] = param
    if not params:
        raise PeftError("the model has no LoRA layers; call apply_lora(model, config) first")
    return params


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors of ``model`` under HF PEFT key names (detached, not copied).

    Sharded (DTensor) parameters are gathered, which is a collective: call it on every rank.
    """
    state = {}
    for key, param in _adapter_params(model).items():
        tensor = param.detach()
        if hasattr(tensor, "full_tensor"):
            tensor = tensor.full_tensor()
        state[key] = tensor
    return state


def _compact_targets(model: nn.Module, names: list[str]) -> list[str]:
    # PEFT selects a module when its name equals a target or ends with "." + target. Leaf names are what people
    # expect to read; fall back to full names when the leaves would also select modules we did not adapt.
    leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
    all_names = [_hf_name(n) for n, _ in model.named_modules()]
    selected_by_leaves = {n for n in all_names if any(n == leaf or n.endswith("." + leaf) for leaf in leaves)}
    return leaves if selected_by_leaves == set(names) else sorted(names)


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_adapter(
    model: nn.Module,
    output_dir: str | os.PathLike,
    config: PeftConfig,
    *,
    base_model_name_or_path: str | None,
    target_module_names: list[str] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model``'s adapter to ``output_dir`` in HF PEFT format (plus ``automodel_peft.json``); return the dir.

    ``target_module_names`` (the list apply_lora returned) defaults to every adapted module of ``model``.
    ``state_dict``: a :func:`lora_state_dict` already gathered (sharded models: gather on every rank, save on one).
    """
    modules = {_hf_name(n): m for n, m in lora_modules(model).items()}
    for name, module in modules.items():
        if module.lora_A.out_features != config.dim or module.use_dora != config.use_dora:
            raise PeftError(
                f"save_adapter: module {name} has rank {module.lora_A.out_features} (use_dora={module.use_dora}) but "
                f"the config says dim={config.dim} (use_dora={config.use_dora}); pass the PeftConfig given to apply_lora"
            )
    names = [_hf_name(n) for n in target_module_names] if target_module_names else list(modules)
    state = lora_state_dict(model) if state_dict is None else state_dict
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.to("cpu").contiguous() for k, v in state.items()}
    _write_atomic(out / ADAPTER_WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    hf_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": config.dim,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": _compact_targets(model, names),
        "use_dora": config.use_dora,
        "use_rslora": config.use_rslora,
        "bias": "none",
        "lora_bias": False,
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "inference_mode": True,
    }
    extras = {field: getattr(config, field) for field in _EXTRA_FIELDS}
    for name, payload in ((ADAPTER_CONFIG_NAME, hf_config), (EXTRAS_NAME, extras)):
        text = json.dumps(payload, indent=2) + "\n"
        _write_atomic(out / name, lambda p, text=text: p.write_text(text))
    logger.info("saved LoRA adapter (%d tensors) to %s", len(tensors), out)
    return out


def _read_weights(adapter_dir: Path) -> dict[str, torch.Tensor]:
    path = adapter_dir / ADAPTER_WEIGHTS_NAME
    if not path.is_file():
        raise PeftError(
            f"{path} not found: an HF PEFT adapter folder holds {ADAPTER_WEIGHTS_NAME} and {ADAPTER_CONFIG_NAME}"
        )
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise PeftError(f"{path} is not a readable safetensors file ({err}); save the adapter again") from None
    # Keys saved without the PeftModel prefix (some exporters) mean the same module.
    return {k if k.startswith(PEFT_KEY_PREFIX) else PEFT_KEY_PREFIX + k: v for k, v in weights.items()}


def _check_keys_and_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, torch.Tensor], source: Path, *, strict: bool
) -> None:
    for key, shape in expected.items():
        if key in found and tuple(found[key].shape) != shape:
            raise PeftError(
                f"{source}: {key} has shape {tuple(found[key].shape)} but the model expects {shape}; the adapter was "
                "made for a different base model (or rank): use the base model it was trained on"
            )
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    if strict and (missing or unexpected):
        raise PeftError(
            f"{source} does not match the model's LoRA layers: missing {missing[:_NUM_LISTED]}"
            f"{' ...' if len(missing) > _NUM_LISTED else ''} ({len(missing)}), unexpected {unexpected[:_NUM_LISTED]}"
            f"{' ...' if len(unexpected) > _NUM_LISTED else ''} ({len(unexpected)}); apply the same PeftConfig "
            "(target_modules, use_dora) that the adapter was saved with"
        )
    if missing:
        logger.warning("%s: %d adapter tensors missing, kept at their init: %s", source, len(missing), missing[:5])
    if unexpected:
        logger.warning("%s: %d tensors ignored (no such LoRA layer): %s", source, len(unexpected), unexpected[:5])


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike, *, strict: bool = True) -> None:
    """Copy the adapter weights in ``adapter_dir`` into ``model``, already patched by apply_lora (e.g. on resume)."""
    params = _adapter_params(model)
    source = Path(adapter_dir) / ADAPTER_WEIGHTS_NAME
    found = _read_weights(Path(adapter_dir))
    _check_keys_and_shapes({k: tuple(p.shape) for k, p in params.items()}, found, source, strict=strict)
    with torch.no_grad():
        for key, param in params.items():
            if key in found:
                param.copy_(found[key])


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise PeftError(f"{path} not found: is this an HF PEFT adapter folder?") from None
    except json.JSONDecodeError as err:
        raise PeftError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise PeftError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _reject_unsupported(hf: dict[str, Any], path: Path) -> None:
    if hf.get("peft_type", "LORA") != "LORA":
        raise PeftError(f"{path}: peft_type {hf['peft_type']!r} is not supported; only LORA adapters load here")
    unsupported = {
        "bias": hf.get("bias", "none") != "none",
        "lora_bias": bool(hf.get("lora_bias")),
        "fan_in_fan_out": bool(hf.get("fan_in_fan_out")),
        "modules_to_save": bool(hf.get("modules_to_save")),
        "rank_pattern": bool(hf.get("rank_pattern")),
        "alpha_pattern": bool(hf.get("alpha_pattern")),
        "layers_to_transform": hf.get("layers_to_transform") is not None,
        "target_parameters": bool(hf.get("target_parameters")),
        "trainable_token_indices": bool(hf.get("trainable_token_indices")),
    }
    bad = [key for key, is_set in unsupported.items() if is_set]
    if bad:
        raise PeftError(
            f"{path}: {', '.join(f'{k}={hf[k]!r}' for k in bad)} not supported; only plain LoRA/DoRA/rsLoRA on "
            "linear layers (bias 'none', one rank and alpha for all modules) can be loaded"
        )


def _resolve_patterns(model: nn.Module, value: Any, key: str, path: Path) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # PEFT: a string is a regex over full module names
        names = select_by_regex(model, value)
        if not names and key == "target_modules":
            raise PeftError(f"{path}: target_modules regex {value!r} matches no module of this model")
        return names
    if isinstance(value, list):
        return [str(v) for v in value]
    raise PeftError(f"{path}: {key} must be a list of names or a regex string, got {value!r}")


def read_adapter_config(model: nn.Module, adapter_dir: str | os.PathLike) -> PeftConfig:
    """Build the PeftConfig that reproduces the adapter in ``adapter_dir`` on ``model`` (regex targets resolved)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG_NAME
    hf = _read_json(path)
    _reject_unsupported(hf, path)
    match_all_linear = hf.get("target_modules") == "all-linear"
    targets = [] if match_all_linear else _resolve_patterns(model, hf.get("target_modules"), "target_modules", path)
    extras_path = Path(adapter_dir) / EXTRAS_NAME
    extras = _read_json(extras_path) if extras_path.is_file() else {}
    try:
        return PeftConfig(
            target_modules=targets,
            exclude_modules=_resolve_patterns(model, hf.get("exclude_modules"), "exclude_modules", path),
            match_all_linear=match_all_linear,
            dim=hf.get("r", 8),
            alpha=hf.get("lora_alpha", 8),
            dropout=hf.get("lora_dropout", 0.0),
            use_dora=bool(hf.get("use_dora", False)),
            use_rslora=bool(hf.get("use_rslora", False)),
            # HF PEFT puts dropout on the LoRA input; "post" only when we saved it ourselves.
            dropout_position=extras.get("dropout_position", "pre"),
            lora_A_init=extras.get("lora_A_init", "kaiming"),
            lora_dtype=extras.get("lora_dtype"),
        )
    except PeftError as err:
        raise PeftError(f"{path}: {err}") from None


def write_adapter_dir(
    model: nn.Module,
    directory: str | os.PathLike,
    config: PeftConfig,
    *,
    base_model_name_or_path: str | None,
    rank: int = 0,
    tokenizer: Any = None,
) -> None:
    """A checkpoint's ``model/`` for a PEFT run: the adapter (+ tokenizer). Call it on every rank: under FSDP2 the
    adapter tensors are gathered collectively; rank 0 writes."""
    state = lora_state_dict(model)
    if rank != 0:
        return
    save_adapter(model, directory, config, base_model_name_or_path=base_model_name_or_path, state_dict=state)
    if tokenizer is not None:  # so the folder is self-contained for inference and merging
        tokenizer.save_pretrained(directory)


def apply_peft(model: nn.Module, config: PeftConfig) -> tuple[PeftConfig, list[str]]:
    """What the recipe calls: apply ``config`` (or the adapter at ``config.adapter_path``, loading its weights).

    Returns the effective config (for an existing adapter, the one read from it) and the adapted module names.
    """
    if config.adapter_path is None:
        return config, apply_lora(model, config)
    given = [key for key in ("target_modules", "exclude_modules") if getattr(config, key)]
    if given or config.match_all_linear:
        logger.warning(
            "peft.adapter_path is set: the adapter's own adapter_config.json decides the targets; ignoring peft.%s",
            ", peft.".join(given or ["match_all_linear"]),
        )
    effective = apply_lora_from_pretrained(model, config.adapter_path)
    logger.info("Started from the adapter in %s (r=%d, alpha=%s)", config.adapter_path, effective.dim, effective.alpha)
    return effective, sorted(lora_modules(model))


def apply_lora_from_pretrained(model: nn.Module, adapter_dir: str | os.PathLike) -> PeftConfig:
    """Patch ``model`` with the HF PEFT adapter in ``adapter_dir`` (made by PEFT or by us) and load its weights.

    Every check (config, keys, shapes) runs before the model is touched. Returns the PeftConfig used.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(model, adapter_dir)
    found = _read_weights(adapter_dir)
    modules = dict(model.named_modules())
    expected: dict[str, tuple[int, ...]] = {}
    for name in select_linear_modules(model, config):
        module = modules[name]
        prefix = f"{PEFT_KEY_PREFIX}{_hf_name(name)}."
        expected[prefix + "lora_A.weight"] = (config.dim, module.in_features)
        expected[prefix + "lora_B.weight"] = (module.out_features, config.dim)
        if config.use_dora:
            expected[prefix + "lora_magnitude_vector"] = (module.out_features,)
    _check_keys_and_shapes(expected, found, adapter_dir / ADAPTER_WEIGHTS_NAME, strict=True)
    apply_lora(model, config)
    load_adapter(model, adapter_dir, strict=True)
    return config
