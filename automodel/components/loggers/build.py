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
    """`logging:` -- where metrics go. `log_dir: none` means the checkpoint dir (or `logs/` without checkpoints).

    `peak_flops` is the per-device peak (FLOP/s) that MFU is measured against; none uses the device's table value
    (H100/H200 989e12 bf16 dense, A100 312e12, ...; this CPU class 880e9 bf16 / 213e9 fp32, measured).
    """

    log_dir: str | None = None
    log_every_steps: int = 1
    progress_bar: bool = True
    peak_flops: float | None = None

    def __post_init__(self) -> None:
        if self.log_every_steps < 1:
            raise LoggerError(f"logging.log_every_steps must be >= 1, got {self.log_every_steps}")
        if self.peak_flops is not None and not self.peak_flops > 0:
            raise LoggerError(f"logging.peak_flops must be > 0 (FLOP/s per device) or none, got {self.peak_flops}")

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
