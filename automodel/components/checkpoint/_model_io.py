"""Writing and reading the ``model/`` folder of a checkpoint (an HF model folder).

Kept to two plain functions so a PEFT adapter writer can replace them without touching the rest of the checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_model
from torch import nn

from automodel.components.checkpoint.config import CheckpointError

logger = logging.getLogger(__name__)

_TORCH_WEIGHTS = "pytorch_model.bin"


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel keep the real model in .module; its state-dict keys carry a "module." prefix
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def save_model_dir(model: nn.Module, model_dir: Path, *, tokenizer: Any = None, save_format: str) -> None:
    """Write ``model`` (and ``tokenizer``) as an HF folder that ``from_pretrained`` loads."""
    model = _unwrap(model)
    model_dir.mkdir(parents=True, exist_ok=True)
    has_hf_api = callable(getattr(model, "save_pretrained", None))
    if save_format == "safetensors" and has_hf_api:
        model.save_pretrained(model_dir)  # transformers 5 always writes safetensors (sharded when large)
    elif save_format == "safetensors":
        save_model(model, str(model_dir / "model.safetensors"))  # handles tied / shared tensors
    else:  # torch_save: the legacy HF layout, config.json + pytorch_model.bin
        torch.save(model.state_dict(), model_dir / _TORCH_WEIGHTS)
        if has_hf_api:
            model.config.save_pretrained(model_dir)
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(model_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(model_dir)


def _read_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    if (model_dir / _TORCH_WEIGHTS).is_file():
        return torch.load(model_dir / _TORCH_WEIGHTS, map_location="cpu", weights_only=True)
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise CheckpointError(
            f"checkpoint model folder '{model_dir}' holds no *.safetensors or {_TORCH_WEIGHTS}; the checkpoint is "
            "damaged: resume from another one (checkpoint.restore_from)"
        )
    state: dict[str, torch.Tensor] = {}
    for file in files:  # one file, or the shards of model.safetensors.index.json
        state.update(load_file(file, device="cpu"))
    return state


def _key_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    own = model.state_dict()
    # Tied parameters (lm_head.weight = embed_tokens.weight) are written once; a missing key that shares storage
    # with a loaded one is filled through the tie.
    loaded_storage = {own[key].data_ptr() for key in own if key in state}
    missing = [key for key in own if key not in state and own[key].data_ptr() not in loaded_storage]
    unexpected = [key for key in state if key not in own]
    return missing, unexpected


def _mismatch_error(model_dir: Path, missing: list[str], unexpected: list[str]) -> CheckpointError:
    return CheckpointError(
        f"the weights in '{model_dir}' do not fit the model: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
        f", unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; the checkpoint belongs to another "
        "model: use another checkpoint.checkpoint_dir / checkpoint.restore_from"
    )


def _load_through_transformers(model: nn.Module, model_dir: Path) -> None:
    # transformers 5 saves some models (MoE experts, VLMs) in their original hub layout and converts on load; let
    # from_pretrained apply that conversion, then copy the result over.
    reference, info = type(model).from_pretrained(
        model_dir, config=model.config, dtype=next(model.parameters()).dtype, output_loading_info=True
    )
    missing = sorted(info.get("missing_keys") or [])
    missing += sorted(str(entry[0]) for entry in info.get("mismatched_keys") or [])  # (key, saved shape, own shape)
    unexpected = sorted(info.get("unexpected_keys") or [])
    if missing or unexpected:
        raise _mismatch_error(model_dir, missing, unexpected)
    model.load_state_dict(reference.state_dict(), strict=True)


def load_model_weights(model: nn.Module, model_dir: Path) -> None:
    """Load the weights of ``model_dir`` into ``model`` in place; every parameter must be covered (strict)."""
    model = _unwrap(model)
    state = _read_weights(model_dir)
    missing, unexpected = _key_mismatch(model, state)
    if missing or unexpected:
        if callable(getattr(type(model), "from_pretrained", None)) and hasattr(model, "config"):
            logger.info("weight names in '%s' differ from the model's; loading through from_pretrained", model_dir)
            _load_through_transformers(model, model_dir)
            return
        raise _mismatch_error(model_dir, missing, unexpected)
    try:
        model.load_state_dict(state, strict=False)  # strictness checked above, ties accounted for
    except RuntimeError as error:  # size mismatch; torch lists one per line, the CLI wants one line
        details = "; ".join(line.strip() for line in str(error).splitlines() if "size mismatch" in line)
        raise CheckpointError(
            f"the weights in '{model_dir}' do not fit the model ({details or error}); use a checkpoint of this model"
        ) from None
