"""Crash-safe training checkpoints: an HF model folder plus optimizer, scheduler, RNG and step state."""

from automodel.components.checkpoint._identity import frozen_fingerprint
from automodel.components.checkpoint.checkpointer import Checkpointer
from automodel.components.checkpoint.config import CheckpointConfig, CheckpointError

__all__ = ["CheckpointConfig", "CheckpointError", "Checkpointer", "frozen_fingerprint"]
