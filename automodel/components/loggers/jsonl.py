"""Metrics as JSON Lines: one object per ``log`` call, flushed at once so a killed run keeps every finished line."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automodel.components.loggers.base import LoggerError

_RESERVED = ("step", "split", "time")


def to_json_safe(value: Any) -> Any:
    """Plain JSON value for ``value``: tensors and numpy values become numbers or lists, inf/nan become null."""
    if hasattr(value, "tolist") and callable(value.tolist):  # torch.Tensor, numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_safe(v) for v in value]
    return str(value)


class JSONLLogger:
    """Append ``{"step": s, "split": prefix, **metrics, "time": unix_seconds}`` lines to ``path``.

    Appending (not truncating) keeps the history of a resumed run in one file.
    """

    def __init__(self, path: str | os.PathLike[str], *, rank: int = 0) -> None:
        self.path = Path(path)
        self._file = None
        if rank != 0:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise LoggerError(
                f"cannot open the metrics file {self.path} for appending: {exc}; choose a writable path"
            ) from exc

    def log(self, metrics: Mapping[str, Any], step: int, *, prefix: str = "train") -> None:
        if self._file is None:
            return
        clash = [k for k in metrics if k in _RESERVED]
        assert not clash, f"metric names {clash} are reserved by the JSONL record"
        record = {"step": int(step), "split": prefix, **to_json_safe(dict(metrics)), "time": time.time()}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

    def log_config(self, config: Mapping[str, Any]) -> None:
        """No-op: every line is a metrics record; the resolved config is saved with each checkpoint."""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
