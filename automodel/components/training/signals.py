"""Turns pre-emption signals (SLURM sends SIGTERM / SIGUSR1) into a flag the training loop polls."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from automodel.components.training.errors import TrainingError

logger = logging.getLogger(__name__)

_DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def _to_signal(value: int | str) -> signal.Signals:
    if isinstance(value, str):  # a YAML list of names: [SIGTERM, SIGUSR1]
        try:
            return signal.Signals[value.upper()]
        except KeyError:
            raise TrainingError(f"unknown signal name {value!r}; use names like SIGTERM or SIGUSR1") from None
    return signal.Signals(value)


class ShutdownSignal:
    """Installs handlers that record a shutdown request instead of killing the process.

    The loop checks :attr:`requested` (one process) or :meth:`any_rank_requested` (all ranks, collective) at a step
    boundary, saves a checkpoint and exits. :meth:`uninstall` (or leaving the ``with`` block) restores the previous
    handlers. Outside the main thread Python cannot install handlers: a warning is logged and nothing is installed.
    """

    def __init__(self, signals: Iterable[int | str] = _DEFAULT_SIGNALS) -> None:
        self.signals = tuple(_to_signal(s) for s in signals)
        self._received: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            logger.warning(
                "ShutdownSignal built outside the main thread: %s will not be caught, so pre-emption kills the "
                "run without a final checkpoint",
                ", ".join(s.name for s in self.signals),
            )
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._received is None:
            self._received = signal.Signals(signum)
            logger.warning(
                "received %s: the run will save a checkpoint and stop at the next step boundary", self._received.name
            )

    @property
    def requested(self) -> bool:
        """True once one of the signals arrived in this process."""
        return self._received is not None

    @property
    def received_signal(self) -> signal.Signals | None:
        """The first signal that arrived, or None."""
        return self._received

    def any_rank_requested(self) -> bool:
        """True when any rank received a signal (all-reduce MAX); every rank must call it at the same step."""
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return self.requested
        device = torch.device("cpu")
        if "nccl" in str(dist.get_backend()) and torch.cuda.is_available():
            device = torch.device("cuda", torch.cuda.current_device())
        flag = torch.tensor([1 if self.requested else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())  # host-device sync: once per step, a 4-byte tensor

    def uninstall(self) -> None:
        """Restore the handlers that were active before; safe to call twice."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous = {}

    def __enter__(self) -> ShutdownSignal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()
