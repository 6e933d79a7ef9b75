"""What a checkpoint holds of the model and optimizer, and how it is written and read.

Two representations, for two readers:
- ``state/``: a torch.distributed.checkpoint (DCP) directory with the *trainable* parameters and the optimizer state,
  keyed by parameter name. Every rank writes its own shard (FSDP2 DTensors stay sharded; replicated tensors are
  written once), and loading reshards to the current world size, so a run saved on 2 processes resumes on 1 or 4.
  Frozen parameters (a PEFT base model, a frozen vision tower) are not written: they come from the base model.
- ``model/``: a consolidated Hugging Face folder that ``from_pretrained`` loads (gathered to rank 0), or whatever
  the caller's ``model_writer`` writes there instead (a PEFT adapter).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from automodel.components.checkpoint.config import CheckpointError

logger = logging.getLogger(__name__)

_TORCH_WEIGHTS = "pytorch_model.bin"
ModelWriter = Callable[[Path], None]


def unwrap(model: nn.Module) -> nn.Module:
    # DDP / DataParallel keep the real model in .module; its state-dict keys carry a "module." prefix
    if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
        return model.module
    return model


def _trainable_state(model: nn.Module) -> dict[str, Any]:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {key: value for key, value in get_model_state_dict(model).items() if key in trainable}


def _no_dist() -> bool:
    return not (dist.is_available() and dist.is_initialized())


def save_state(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Collective: every rank writes its shard of the trainable parameters and the optimizer state."""
    model = unwrap(model)
    state: dict[str, Any] = {"model": _trainable_state(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(state, checkpoint_id=str(state_dir), no_dist=_no_dist())


def load_state(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Collective: load (and reshard) trainable parameters and optimizer state in place."""
    model = unwrap(model)
    state: dict[str, Any] = {"model": _trainable_state(model)}
    if optimizer is not None:
        state["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
            dcp.load(state, checkpoint_id=str(state_dir), no_dist=_no_dist())
    except (Exception, CheckpointException) as error:  # CheckpointException derives from BaseException
        lines = str(error).strip().splitlines() or [type(error).__name__]
        # the wrapped per-rank traceback ends with "ValueError: Size mismatch ..." / "RuntimeError: Missing key ..."
        errors = [line.split(": ", 1)[1] for line in lines if line.strip().startswith(("ValueError:", "RuntimeError:"))]
        detail = errors[-1] if errors else lines[-1][:300]
        raise CheckpointError(
            f"the state in '{state_dir}' does not fit this model/optimizer ({detail.strip()}); the trainable "
            "parameters changed since the checkpoint (another model, PEFT or optimizer settings?): use another "
            "checkpoint.checkpoint_dir or checkpoint.restore_from"
        ) from None
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, state["optim"])


def write_hf_model(
    model: nn.Module, model_dir: Path, *, rank: int, tokenizer: Any = None, save_format: str = "safetensors"
) -> None:
    """Collective: gather the full weights (sharded or not) to rank 0, which writes an HF folder there."""
    model = unwrap(model)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    # A gathered state dict holds separate copies of tied parameters (lm_head = embed_tokens); write each once, as
    # save_pretrained does for a plain model.
    aliases = {name for name, _ in model.named_parameters(remove_duplicate=False)} - {
        name for name, _ in model.named_parameters()
    }
    full = {key: value for key, value in full.items() if key not in aliases}
    model_dir.mkdir(parents=True, exist_ok=True)
    has_hf_api = callable(getattr(model, "save_pretrained", None))
    if save_format == "safetensors" and has_hf_api:
        model.save_pretrained(model_dir, state_dict=full)  # transformers 5 always writes safetensors
    elif save_format == "safetensors":
        from safetensors.torch import save_file

        save_file(_dedup_shared(full), str(model_dir / "model.safetensors"))
    else:  # torch_save: the legacy HF layout, config.json + pytorch_model.bin
        torch.save(full, model_dir / _TORCH_WEIGHTS)
        if has_hf_api:
            model.config.save_pretrained(model_dir)
            generation_config = getattr(model, "generation_config", None)
            if generation_config is not None:
                generation_config.save_pretrained(model_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(model_dir)


def _dedup_shared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing memory (tied weights): keep the first name of each storage
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in seen:
            seen.add(ptr)
            out[key] = tensor.contiguous()
    return out
