"""Console output: a tqdm progress bar over optimizer steps plus one compact line per logged step.

Metric keys with a dedicated format (others print as ``key value``, in the order given):
``loss``, ``ppl``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``peak_memory_gib``, ``mfu`` (a fraction, shown in %),
``num_label_tokens`` (supervised tokens), ``num_tokens``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from tqdm import tqdm

from automodel.components.loggers.base import LoggerError

# key -> (label, formatter); the dict order is the order on the line.
_FORMATS: dict[str, tuple[str, Callable[[float], str]]] = {
    "loss": ("loss", lambda v: f"{v:.4f}"),
    "ppl": ("ppl", lambda v: f"{v:.2f}"),
    "lr": ("lr", lambda v: f"{v:.2e}"),
    "grad_norm": ("grad_norm", lambda v: f"{v:.2f}"),
    "tokens_per_s": ("tok/s", lambda v: f"{v:.0f}"),
    "peak_memory_gib": ("mem", lambda v: f"{v:.2f} GiB"),
    "mfu": ("mfu", lambda v: f"{100 * v:.1f}%"),
    "num_label_tokens": ("sup_tok", lambda v: f"{v:.0f}"),
    "num_tokens": ("tokens", lambda v: f"{v:.0f}"),
}
_POSTFIX_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s")


def _as_float(value: Any) -> float | None:
    try:
        return float(value)  # also takes 0-d tensors and numpy scalars
    except (TypeError, ValueError):
        return None


def _format_value(key: str, value: Any) -> str:
    number = _as_float(value)
    if number is None:
        return str(value)
    if math.isnan(number) or math.isinf(number):
        return str(number)
    if key in _FORMATS:
        return _FORMATS[key][1](number)
    if isinstance(value, int) or number.is_integer():
        return f"{number:.0f}"
    return f"{number:.4g}"


def format_metrics(metrics: Mapping[str, Any], keys: tuple[str, ...] | None = None) -> str:
    """``"loss 1.2345 | lr 1.00e-05 | ..."``: known keys first in a fixed order, then the rest as given."""
    known = [k for k in _FORMATS if k in metrics]
    rest = [k for k in metrics if k not in _FORMATS]
    ordered = [k for k in known + rest if keys is None or k in keys]
    return " | ".join(f"{_FORMATS.get(k, (k,))[0]} {_format_value(k, metrics[k])}" for k in ordered)


class ConsoleLogger:
    """Progress bar over optimizer steps and a plain line every ``log_every_steps`` steps.

    The bar redraws only on a terminal; when ``stream`` is not a TTY (a log file, SLURM output), the bar is off and
    the lines remain. Lines go through ``tqdm.write`` so they do not break the bar. Validation (any ``prefix`` but
    ``"train"``) prints on every call.
    """

    def __init__(
        self,
        total_steps: int | None,
        *,
        rank: int = 0,
        progress_bar: bool = True,
        log_every_steps: int = 1,
        stream: IO[str] | None = None,
    ) -> None:
        if log_every_steps < 1:
            raise LoggerError(f"log_every_steps={log_every_steps} must be >= 1 (log a line every N optimizer steps)")
        self.total_steps = total_steps
        self.enabled = rank == 0
        self.log_every_steps = log_every_steps
        # Resolved at construction, not import, so pytest's capsys and redirections are honoured.
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.progress_bar = progress_bar and self.enabled and bool(isatty and isatty())
        self._start_step = 0
        self._bar: Any = None

    def _get_bar(self) -> Any:
        if self._bar is None and self.progress_bar:
            self._bar = tqdm(
                total=self.total_steps,
                initial=self._start_step,
                file=self.stream,
                unit="step",
                dynamic_ncols=True,
                leave=True,
            )
        return self._bar

    def resume(self, step: int) -> None:
        """Start the bar at ``step`` (a resumed run); call before the first ``log``."""
        self._start_step = step
        if self._bar is not None:
            self._bar.n = self._bar.initial = step
            self._bar.refresh()

    def _write(self, line: str) -> None:
        tqdm.write(line, file=self.stream)
        self.stream.flush()

    def log(self, metrics: Mapping[str, Any], step: int, *, prefix: str = "train") -> None:
        if not self.enabled:
            return
        if prefix != "train":
            self._write(f"{prefix} step {step} | {format_metrics(metrics)}")
            return
        bar = self._get_bar()
        if bar is not None:
            bar.update(step - bar.n)
            bar.set_postfix_str(format_metrics(metrics, _POSTFIX_KEYS), refresh=True)
        if step % self.log_every_steps == 0 or step == self.total_steps:
            total = f"/{self.total_steps}" if self.total_steps else ""
            self._write(f"step {step}{total} | {format_metrics(metrics)}")

    def log_config(self, config: Mapping[str, Any]) -> None:
        """No-op: the recipe prints the resolved config itself."""

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
