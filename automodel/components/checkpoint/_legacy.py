"""Checkpoints of the pickle-based format (before manifest.json): refused unless the user says they wrote them.

That format kept DCP's default files (``state/.metadata`` is a pickle, non-tensor values are ``torch.load``-ed with
``weights_only=False``), ``scheduler.pt`` and ``rng_rank<R>.pt``: loading one written by someone else can run any
code. ``AUTOMODEL_TRUST_PICKLED_CHECKPOINTS=1`` (an environment variable, so no config can set it) loads them with
the code that wrote them; the next save writes the new format.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from automodel.components.checkpoint import _layout
from automodel.components.checkpoint._model_io import _no_dist, _trainable_state, unwrap
from automodel.components.checkpoint.config import CheckpointError

logger = logging.getLogger(__name__)


def refusal(path: Path) -> CheckpointError:
    return CheckpointError(
        f"checkpoint '{path}' is in the old pickle-based format (state/.metadata, scheduler.pt, rng_rank<R>.pt), "
        "which can run arbitrary code when loaded, so it is not loaded. Only if you wrote this checkpoint yourself, "
        f"set {_layout.TRUST_PICKLES_ENV}=1 to load it (the next save writes the safe format); otherwise use another "
        "checkpoint.checkpoint_dir or checkpoint.restore_from"
    )


def warn_trusted(path: Path) -> None:
    logger.warning("loading the pickle-based checkpoint '%s' because %s=1", path, _layout.TRUST_PICKLES_ENV)


def load_state(state_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """The old loader: DCP's default (pickled) metadata and byte items."""
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


def load_scheduler(path: Path) -> Any:
    scheduler_path = path / "scheduler.pt"
    if not scheduler_path.is_file():
        raise CheckpointError(f"'{path}' has no scheduler.pt (it was saved without an LR scheduler)")
    return torch.load(scheduler_path, map_location="cpu", weights_only=True)


def load_rng(path: Path, rank: int) -> Any:
    rng_path = path / f"rng_rank{rank}.pt"
    return torch.load(rng_path, map_location="cpu", weights_only=True) if rng_path.is_file() else None
