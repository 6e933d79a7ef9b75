"""The logger protocol and a fan-out over several loggers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from automodel._shared.errors import UserError


class LoggerError(UserError):
    """A logger was configured wrongly (bad path, missing optional dependency, unknown option)."""


@runtime_checkable
class MetricLogger(Protocol):
    """What the recipe calls. Loggers built for a rank other than 0 accept every call and do nothing."""

    def log(self, metrics: Mapping[str, Any], step: int, *, prefix: str = "train") -> None: ...

    def log_config(self, config: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


class MultiLogger:
    """Send every call to each of ``loggers``, in order."""

    def __init__(self, loggers: Iterable[MetricLogger]) -> None:
        self.loggers = list(loggers)

    def log(self, metrics: Mapping[str, Any], step: int, *, prefix: str = "train") -> None:
        for logger in self.loggers:
            logger.log(metrics, step, prefix=prefix)

    def log_config(self, config: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_config(config)

    def resume(self, step: int) -> None:
        """Tell loggers that track progress (the console bar) that the run continues from ``step``."""
        for logger in self.loggers:
            resume = getattr(logger, "resume", None)
            if resume is not None:
                resume(step)

    def close(self) -> None:
        # Close every logger even if one fails, so files are flushed and the wandb run is finished.
        errors = []
        for logger in self.loggers:
            try:
                logger.close()
            except Exception as exc:  # re-raised below, after the others closed
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> MultiLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
