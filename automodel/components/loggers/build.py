"""Assemble the loggers of a run from the recipe's settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from automodel.components.loggers.base import LoggerError, MetricLogger, MultiLogger
from automodel.components.loggers.console import ConsoleLogger
from automodel.components.loggers.jsonl import JSONLLogger
from automodel.components.loggers.wandb_logger import WandbLogger


@dataclass
class LoggingConfig:
    """`logging:` -- where metrics go. `log_dir: none` means the checkpoint dir (or `logs/` without checkpoints)."""

    log_dir: str | None = None
    log_every_steps: int = 1
    progress_bar: bool = True

    def __post_init__(self) -> None:
        if self.log_every_steps < 1:
            raise LoggerError(f"logging.log_every_steps must be >= 1, got {self.log_every_steps}")

    def resolve_log_dir(self, checkpoint_dir: str | None) -> str:
        return self.log_dir or checkpoint_dir or "logs"


def build_loggers(
    total_steps: int | None,
    *,
    rank: int = 0,
    jsonl_path: str | os.PathLike[str] | None = None,
    wandb: Mapping[str, Any] | None = None,
    wandb_config: Mapping[str, Any] | None = None,
    progress_bar: bool = True,
    log_every_steps: int = 1,
    stream: IO[str] | None = None,
) -> MultiLogger:
    """Console always; a JSONL file when ``jsonl_path`` is set; wandb when the ``wandb`` section is given.

    ``wandb`` holds the YAML section's keys (``project``, ``entity``, ``name``, ``save_dir``, ``mode``...);
    ``wandb_config`` is the redacted run config to attach to the wandb run.
    """
    loggers: list[MetricLogger] = [
        ConsoleLogger(
            total_steps,
            rank=rank,
            progress_bar=progress_bar,
            log_every_steps=log_every_steps,
            stream=stream if stream is not None else sys.stderr,
        )
    ]
    if jsonl_path is not None:
        loggers.append(JSONLLogger(jsonl_path, rank=rank))
    if wandb is not None:
        loggers.append(WandbLogger(**dict(wandb), rank=rank, config=wandb_config))
    return MultiLogger(loggers)
