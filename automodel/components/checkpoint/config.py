"""The ``checkpoint:`` YAML section and the component's error type."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from automodel._shared.errors import UserError

_SAVE_FORMATS = ("safetensors", "torch_save")


class CheckpointError(UserError):
    """A checkpoint the user can fix: missing, incomplete, of another model, or a badly configured section."""


@dataclass
class CheckpointConfig:
    """Where and how checkpoints are written, and which one to resume from.

    ``restore_from`` is a checkpoint directory (or its name inside ``checkpoint_dir``), or ``"LATEST"``. When it is
    unset and checkpointing is enabled, a run resumes from ``<checkpoint_dir>/LATEST`` when that exists.
    ``keep_last_n`` deletes older checkpoints after a new one is published (never the one ``LATEST`` names).
    """

    enabled: bool = False
    checkpoint_dir: str = "checkpoints/"
    model_save_format: Literal["safetensors", "torch_save"] = "safetensors"
    save_consolidated: bool = True
    restore_from: str | None = None
    keep_last_n: int | None = None

    def __post_init__(self) -> None:
        # a recipe may pass pathlib paths; keep the field a string, as in the YAML
        if isinstance(self.checkpoint_dir, os.PathLike):
            self.checkpoint_dir = os.fspath(self.checkpoint_dir)
        if isinstance(self.restore_from, os.PathLike):
            self.restore_from = os.fspath(self.restore_from)
        for name in ("enabled", "save_consolidated"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise CheckpointError(f"checkpoint.{name} must be true or false, got {value!r}")
        if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir.strip():
            raise CheckpointError(
                f"checkpoint.checkpoint_dir must be a non-empty directory path, got {self.checkpoint_dir!r}"
            )
        if self.model_save_format not in _SAVE_FORMATS:
            raise CheckpointError(
                f"checkpoint.model_save_format must be one of {list(_SAVE_FORMATS)}, got {self.model_save_format!r}"
            )
        if self.restore_from is not None and (not isinstance(self.restore_from, str) or not self.restore_from.strip()):
            raise CheckpointError(
                f"checkpoint.restore_from must be a checkpoint directory, 'LATEST' or null, got {self.restore_from!r}"
            )
        keep = self.keep_last_n
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise CheckpointError(f"checkpoint.keep_last_n must be a positive integer or null, got {keep!r}")
