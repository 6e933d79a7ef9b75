"""Weights & Biases tracking (optional extra: ``pip install 'automodel[wandb]'``)."""

from __future__ import annotations

import inspect
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from automodel.components.loggers.base import LoggerError

logger = logging.getLogger(__name__)


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise LoggerError("wandb is not installed: pip install 'automodel[wandb]'") from exc
    return wandb


def _scalar(value: Any) -> Any:
    # 0-d tensors / numpy scalars -> Python numbers; wandb would otherwise log them as histograms or objects.
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    return value


class WandbLogger:
    """Log metrics to a wandb run as ``{prefix}/{key}`` at ``step``.

    ``save_dir`` (alias ``dir``) is where wandb writes its run files; ``mode`` is ``"online"``, ``"offline"`` or
    ``"disabled"`` (default: the ``WANDB_MODE`` environment variable, else online). Other keyword arguments go to
    ``wandb.init`` (``group``, ``notes``, ``id``, ``resume``...). Pass the redacted config (placeholders kept):
    whatever is given here is uploaded.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        mode: str | None = None,
        tags: Sequence[str] | None = None,
        rank: int = 0,
        config: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._run: Any = None
        if rank != 0:
            return
        wandb = _import_wandb()
        if "dir" in kwargs:
            if save_dir is not None:
                raise LoggerError("wandb.save_dir and wandb.dir are the same setting; keep only save_dir")
            save_dir = kwargs.pop("dir")
        accepted = set(inspect.signature(wandb.init).parameters) - {"dir", "config"}
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            raise LoggerError(
                f"unknown wandb option(s) {unknown}: the wandb section takes project, entity, name, save_dir, mode, "
                f"tags and the keyword arguments of wandb.init: {sorted(accepted)}"
            )
        if save_dir is not None:
            Path(save_dir).mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("settings", {"silent": True})  # no banner lines between the progress bar and the logs
        self._run = wandb.init(
            project=project,
            entity=entity,
            name=name,
            dir=None if save_dir is None else str(save_dir),
            mode=mode,
            tags=list(tags) if tags is not None else None,
            config=dict(config) if config is not None else None,
            **kwargs,
        )
        if getattr(self._run, "offline", False):
            logger.info("wandb run (offline): %s; upload it later with `wandb sync`", self._run.dir)
        else:
            logger.info("wandb run: %s", self._run.url)

    @property
    def run(self) -> Any:
        """The ``wandb`` run object (None on ranks other than 0 and after ``close``)."""
        return self._run

    def log(self, metrics: Mapping[str, Any], step: int, *, prefix: str = "train") -> None:
        if self._run is None:
            return
        # None marks a metric not measured this step (e.g. no MFU on an unknown GPU): leave a gap, not a value.
        values = {f"{prefix}/{k}": _scalar(v) for k, v in metrics.items() if v is not None}
        self._run.log(values, step=step)

    def log_config(self, config: Mapping[str, Any]) -> None:
        if self._run is not None:
            self._run.config.update(dict(config), allow_val_change=True)

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
