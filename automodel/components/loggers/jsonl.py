"""Metrics as JSON Lines: one object per ``log`` call, flushed at once so a killed run keeps every finished line."""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automodel.components.loggers.base import LoggerError

logger = logging.getLogger(__name__)

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

    Appending (not truncating) keeps the history of a resumed run in one file. :meth:`resume` first drops what the
    interrupted run logged after the checkpoint it resumes from, so no step appears twice.
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

    def resume(self, step: int) -> None:
        """The run continues after ``step``: drop the records of later steps (logged by a run killed before it
        checkpointed them, and about to be logged again) and a last line cut off mid-write. Rank 0 only; the file is
        replaced atomically (temp file + os.replace), so a kill here leaves the old or the new file, never a mix."""
        if self._file is None:
            return
        self._file.close()
        self._file = None
        try:
            # bytes, not text: a record cut off mid-write may end inside a multi-byte character
            *lines, tail = self.path.read_bytes().split(b"\n")
            kept = [line for line in lines if not _after(line, step)]
            dropped = len(lines) - len(kept) + bool(tail)
            if dropped:
                temp = self.path.with_name(f".tmp-{self.path.name}-{secrets.token_hex(4)}")
                with temp.open("wb") as f:
                    f.write(b"".join(line + b"\n" for line in kept))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(temp, self.path)
                logger.info(
                    "%s: dropped %d record(s) the interrupted run logged after step %d", self.path, dropped, step
                )
            self._file = self.path.open("a", encoding="utf-8")
        except OSError as exc:
            raise LoggerError(
                f"cannot rewrite the metrics file {self.path} on resume: {exc}; choose a writable path"
            ) from exc

    def log_config(self, config: Mapping[str, Any]) -> None:
        """No-op: every line is a metrics record; the resolved config is saved with each checkpoint."""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _after(line: bytes, step: int) -> bool:
    """A record of a step after ``step`` (a line that is not such a record stays)."""
    try:
        record = json.loads(line)
    except ValueError:  # not JSON (or not UTF-8): not ours to judge
        return False
    return isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step
