"""Metric loggers: console (progress bar + lines), JSON Lines file, Weights & Biases; rank 0 only."""

from automodel.components.loggers.base import LoggerError, MetricLogger, MultiLogger
from automodel.components.loggers.build import LoggingConfig, build_loggers
from automodel.components.loggers.console import ConsoleLogger, format_metrics
from automodel.components.loggers.jsonl import JSONLLogger, to_json_safe
from automodel.components.loggers.wandb_logger import WandbLogger

__all__ = [
    "ConsoleLogger",
    "JSONLLogger",
    "LoggerError",
    "LoggingConfig",
    "MetricLogger",
    "MultiLogger",
    "WandbLogger",
    "build_loggers",
    "format_metrics",
    "to_json_safe",
]
