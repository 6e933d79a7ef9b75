"""Materialise a model built on the meta device: every rank reads only what it keeps from the safetensors files.

The caller passes the safetensors folder (the model loader, `NeMoAutoModelForCausalLM.from_pretrained(...,
init_device="meta")`, knows it: `automodel.components._transformers.meta_weights_path(model)`). After parallelisation each parameter is a DTensor (FSDP2 / TP) or a plain tensor;
each rank reads one tensor at a time and keeps its local shard (`distribute_tensor(..., src_data_rank=None)` slices
locally, no communication), so a model larger than one rank's memory can be loaded.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from automodel.components.distributed.config import DistributedError

logger = logging.getLogger(__name__)

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def has_meta_parameters(model: nn.Module) -> bool:
    return any(t.is_meta for t in [*model.parameters(), *model.buffers()])


def load_model_weights_sharded(
    model: nn.Module, device: torch.device | str | None = None, path: str | os.PathLike | None = None
) -> None:
    """Allocate `model` (built on the meta device, possibly parallelised) on `device` and load its weights from the
    safetensors folder `path` (default: the model's `name_or_path`), keeping only this rank's shards."""
    folder = Path(path or getattr(model, "name_or_path", "") or "")
    rebuilders = _buffer_rebuilders(model)  # first: refuse unknown buffers before reading or allocating anything
    key_to_file = _checkpoint_files(folder)
    device = torch.device(device) if device is not None else torch.device("cpu")
    tied = _tied_parameters(model)
    model.to_empty(device=device)
    for places in tied:
        # to_empty gives each module its own new Parameter (plain tensors), which would untie lm_head from the
        # embeddings: point every place back at one parameter.
        first_module, first_name = places[0]
        for module, name in places[1:]:
            module._parameters[name] = first_module._parameters[first_name]
    for module, name, value in _rebuilt_buffers(rebuilders):
        module._buffers[name] = value.to(device=device, dtype=module._buffers[name].dtype)

    # One entry per distinct tensor: tied weights are one parameter with several names.
    aliases: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for name, tensor in [*model.named_parameters(remove_duplicate=False), *_persistent_buffers(model)]:
        aliases.setdefault(id(tensor), []).append(name)
        tensors[id(tensor)] = tensor
    by_file: dict[Path, list[tuple[str, torch.Tensor]]] = {}
    missing = []
    for key, names in aliases.items():
        found = next((n for n in names if n in key_to_file), None)
        if found is None:
            missing.append(names[0])
        else:
            by_file.setdefault(key_to_file[found], []).append((found, tensors[key]))
    if missing:
        raise DistributedError(
            f"{folder}: the checkpoint has no tensor for {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} ({len(missing)} missing); it does not match the model built from "
            "its config.json. Load without init_device: meta, which applies transformers' key conversions"
        )
    used = {name for entries in by_file.values() for name, _ in entries}
    unused = sorted(set(key_to_file) - used)
    if unused:
        logger.warning("%s: %d checkpoint tensors are not used by the model, e.g. %s", folder, len(unused), unused[:3])

    from safetensors import safe_open

    for file, entries in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for name, target in entries:
                _copy_into(target, handle.get_tensor(name), name, file)
    logger.info("Loaded %d tensors from %s (sharded, %d files)", len(aliases), folder, len(by_file))


def _copy_into(target: torch.Tensor, full: torch.Tensor, name: str, file: Path) -> None:
    if tuple(full.shape) != tuple(target.shape):
        raise DistributedError(
            f"{file}: tensor {name} has shape {tuple(full.shape)}, the model expects {tuple(target.shape)}; the "
            "checkpoint does not match its config.json"
        )
    full = full.to(device=target.device, dtype=target.dtype)
    with torch.no_grad():
        if isinstance(target, DTensor):
            # src_data_rank=None: every rank read the same full tensor, so each slices its shard locally.
            local = distribute_tensor(full, target.device_mesh, target.placements, src_data_rank=None)
            target.to_local().copy_(local.to_local())
        else:
            target.copy_(full)


def _checkpoint_files(folder: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the index of a sharded checkpoint or the single file."""
    if (folder / _INDEX).is_file():
        try:
            weight_map = json.loads((folder / _INDEX).read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise DistributedError(
                f"{folder / _INDEX}: not a safetensors index ({error}); re-save the model"
            ) from error
        return {name: folder / file for name, file in weight_map.items()}
    if (folder / _SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(folder / _SINGLE), framework="pt", device="cpu") as handle:
            return dict.fromkeys(handle.keys(), folder / _SINGLE)
    raise DistributedError(
        f"{str(folder)!r} has no {_SINGLE} or {_INDEX}: loading a model built on the meta device needs safetensors "
        "weights (re-save with save_pretrained) or load it without init_device: meta"
    )


def _tied_parameters(model: nn.Module) -> list[list[tuple[nn.Module, str]]]:
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for name, param in module._parameters.items():
            if param is not None:
                places.setdefault(id(param), []).append((module, name))
    return [group for group in places.values() if len(group) > 1]


def _persistent_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for module_name, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                yield (f"{module_name}.{name}" if module_name else name), buffer


def _buffer_rebuilders(model: nn.Module) -> list[tuple[nn.Module, list[str]]]:
    """The modules whose non-persistent buffers (not in any checkpoint) we know how to recompute."""
    found = []
    for module_name, module in model.named_modules():
        names = [n for n in module._non_persistent_buffers_set if module._buffers.get(n) is not None]
        if not names:
            continue
        rotary = type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "config")
        scaled_embedding = names == ["embed_scale"] and hasattr(module, "scalar_embed_scale")
        if not (rotary or scaled_embedding):
            raise DistributedError(
                f"{type(module).__name__} ({module_name or 'the model'}) has non-persistent buffers "
                f"{', '.join(sorted(names))} that automodel does not know how to rebuild after meta-device init; load "
                "this model without init_device: meta"
            )
        found.append((module, names))
    return found


def _rebuilt_buffers(rebuilders: list[tuple[nn.Module, list[str]]]) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    for module, names in rebuilders:
        if hasattr(module, "scalar_embed_scale") and names == ["embed_scale"]:
            yield module, "embed_scale", torch.tensor(module.scalar_embed_scale)
            continue
        # A fresh rotary module computes inv_freq (and friends) from the config exactly as the original
        # constructor did, for every rope type (default, llama3, yarn, per-layer-type for Gemma 3...).
        with torch.device("cpu"):
            fresh = type(module)(module.config)
        for name in names:
            yield module, name, getattr(fresh, name)
