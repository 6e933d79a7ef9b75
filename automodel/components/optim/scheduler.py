"""Learning-rate and weight-decay schedule over optimizer steps (Megatron/NeMo ``OptimizerParamScheduler``).

The schedule is a function of ``num_steps``, the number of optimizer steps taken so far. Construction applies the
value for step 0; the recipe calls ``step()`` right after each ``optimizer.step()``. So the first update uses the
warmup's initial lr, and step ``lr_warmup_steps`` reaches ``max_lr``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, get_args

import torch

from automodel._shared.errors import UserError

logger = logging.getLogger(__name__)

# The choices as types too, so `automodel llm validate` catches a typo before any weight loads.
LrDecayStyle = Literal["constant", "linear", "cosine", "inverse-square-root", "WSD"]
WsdDecayStyle = Literal["linear", "cosine", "exponential", "minus_sqrt"]
WeightDecayIncrStyle = Literal["constant", "linear", "cosine"]
LR_DECAY_STYLES: tuple[str, ...] = get_args(LrDecayStyle)
WSD_DECAY_STYLES: tuple[str, ...] = get_args(WsdDecayStyle)
WEIGHT_DECAY_INCR_STYLES: tuple[str, ...] = get_args(WeightDecayIncrStyle)


class OptimError(UserError):
    """An optimizer or LR-scheduler setting is invalid."""


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise OptimError(f"lr_scheduler.{key}={value!r} is not a known style; choose one of {list(choices)}")


def _check_non_negative(**values: float | int | None) -> None:
    for key, value in values.items():
        if value is not None and value < 0:
            raise OptimError(f"lr_scheduler.{key}={value} must be >= 0; fix it in the lr_scheduler section")


class OptimizerParamScheduler:
    """Warmup then decay of each param group's lr, and an optional weight-decay schedule.

    ``max_lr``, ``min_lr`` and ``lr_warmup_init`` are values for the first param group; a group created with a
    different lr keeps its ratio to the first group throughout (e.g. a head at 10x the backbone's lr). ``max_lr``
    defaults to the first group's lr. Build it from the freshly built optimizer, then load checkpoints into both:
    the group ratios and the decaying groups are read from the optimizer at construction.

    lr schedule (``s`` = optimizer steps taken, ``W`` = ``lr_warmup_steps``, ``D`` = ``lr_decay_steps``):
      - ``s <= W`` (when ``W > 0``): linear from ``lr_warmup_init`` to ``max_lr``.
      - ``constant``: ``max_lr`` after warmup.
      - ``s > D``: ``min_lr``.
      - ``linear`` / ``cosine``: from ``max_lr`` at ``W`` to ``min_lr`` at ``D``.
      - ``inverse-square-root``: ``max_lr * sqrt(max(W, 1) / s)``, floored at ``min_lr`` (``D`` optional).
      - ``WSD``: ``max_lr`` until ``D - wsd_decay_steps``, then ``lr_wsd_decay_style`` down to ``min_lr`` at ``D``.

    Weight decay (only when ``start_weight_decay`` or ``end_weight_decay`` is set; applied to the groups created
    with ``weight_decay > 0``, so no-decay groups stay at 0): from ``start_weight_decay`` at step 0 to
    ``end_weight_decay`` at ``weight_decay_incr_steps`` (default: ``total_steps``, else ``lr_decay_steps``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        max_lr: float | None = None,
        min_lr: float = 0.0,
        lr_warmup_steps: int = 0,
        lr_warmup_init: float = 0.0,
        lr_decay_steps: int | None = None,
        lr_decay_style: LrDecayStyle = "cosine",
        wsd_decay_steps: int | None = None,
        lr_wsd_decay_style: WsdDecayStyle = "linear",
        start_weight_decay: float | None = None,
        end_weight_decay: float | None = None,
        weight_decay_incr_steps: int | None = None,
        weight_decay_incr_style: WeightDecayIncrStyle = "constant",
        total_steps: int | None = None,
    ) -> None:
        if not optimizer.param_groups:
            raise OptimError("the optimizer has no param groups: nothing to schedule")
        base_lr = float(optimizer.param_groups[0]["lr"])
        max_lr = base_lr if max_lr is None else float(max_lr)
        lr_decay_steps = total_steps if lr_decay_steps is None else lr_decay_steps
        _check_non_negative(
            max_lr=max_lr,
            min_lr=min_lr,
            lr_warmup_steps=lr_warmup_steps,
            lr_warmup_init=lr_warmup_init,
            lr_decay_steps=lr_decay_steps,
            wsd_decay_steps=wsd_decay_steps,
            start_weight_decay=start_weight_decay,
            end_weight_decay=end_weight_decay,
            weight_decay_incr_steps=weight_decay_incr_steps,
            total_steps=total_steps,
        )
        _check_choice("lr_decay_style", lr_decay_style, LR_DECAY_STYLES)
        _check_choice("lr_wsd_decay_style", lr_wsd_decay_style, WSD_DECAY_STYLES)
        _check_choice("weight_decay_incr_style", weight_decay_incr_style, WEIGHT_DECAY_INCR_STYLES)
        if min_lr > max_lr:
            raise OptimError(
                f"lr_scheduler.min_lr={min_lr} is larger than the peak lr {max_lr} (max_lr or optimizer.lr); "
                "set min_lr <= lr"
            )
        if lr_warmup_init > max_lr:
            raise OptimError(
                f"lr_scheduler.lr_warmup_init={lr_warmup_init} is larger than the peak lr {max_lr}; "
                "warmup must go up: set lr_warmup_init <= lr"
            )
        if lr_decay_steps is None and lr_decay_style not in ("constant", "inverse-square-root"):
            raise OptimError(
                f"lr_scheduler.lr_decay_style={lr_decay_style!r} needs lr_decay_steps (or the run's total_steps); "
                "set lr_scheduler.lr_decay_steps or step_scheduler.max_steps"
            )
        if lr_decay_steps is not None and lr_warmup_steps > lr_decay_steps:
            raise OptimError(
                f"lr_scheduler.lr_warmup_steps={lr_warmup_steps} exceeds lr_decay_steps={lr_decay_steps} "
                "(defaults to the run's total steps): shorten the warmup or lengthen the decay"
            )
        if lr_decay_style == "WSD":
            if wsd_decay_steps is None:
                raise OptimError("lr_scheduler.lr_decay_style='WSD' needs wsd_decay_steps (length of the final decay)")
            assert lr_decay_steps is not None  # checked above for every decaying style
            if lr_decay_steps - wsd_decay_steps < lr_warmup_steps:
                raise OptimError(
                    f"lr_scheduler.wsd_decay_steps={wsd_decay_steps} does not fit after the warmup: "
                    f"lr_warmup_steps ({lr_warmup_steps}) + wsd_decay_steps must be <= lr_decay_steps "
                    f"({lr_decay_steps})"
                )

        self.wd_enabled = start_weight_decay is not None or end_weight_decay is not None
        if self.wd_enabled:
            start_weight_decay = end_weight_decay if start_weight_decay is None else start_weight_decay
            end_weight_decay = start_weight_decay if end_weight_decay is None else end_weight_decay
            if weight_decay_incr_style == "constant" and start_weight_decay != end_weight_decay:
                raise OptimError(
                    f"lr_scheduler.weight_decay_incr_style='constant' but start_weight_decay={start_weight_decay} "
                    f"!= end_weight_decay={end_weight_decay}; use 'linear' or 'cosine', or make them equal"
                )
            if weight_decay_incr_steps is None:
                weight_decay_incr_steps = total_steps if total_steps is not None else lr_decay_steps
            if weight_decay_incr_style != "constant" and weight_decay_incr_steps is None:
                raise OptimError(
                    f"lr_scheduler.weight_decay_incr_style={weight_decay_incr_style!r} needs "
                    "weight_decay_incr_steps (or the run's total_steps)"
                )

        self.optimizer = optimizer
        self.max_lr = max_lr
        self.min_lr = float(min_lr)
        self.lr_warmup_steps = int(lr_warmup_steps)
        self.lr_warmup_init = float(lr_warmup_init)
        self.lr_decay_steps = lr_decay_steps
        self.lr_decay_style = lr_decay_style
        self.wsd_decay_steps = wsd_decay_steps
        self.lr_wsd_decay_style = lr_wsd_decay_style
        self.start_weight_decay = start_weight_decay
        self.end_weight_decay = end_weight_decay
        self.weight_decay_incr_steps = weight_decay_incr_steps
        self.weight_decay_incr_style = weight_decay_incr_style
        # Ratios and decay flags come from the groups as built, before this scheduler touches them.
        self._lr_scales = [float(g["lr"]) / base_lr if base_lr > 0 else 1.0 for g in optimizer.param_groups]
        self._decays = [float(g.get("weight_decay", 0.0)) > 0 for g in optimizer.param_groups]
        self.num_steps = 0
        self._apply()

    # --- schedule ------------------------------------------------------------------------------------------------
    def get_lr(self, num_steps: int | None = None) -> float:
        """The first param group's lr after ``num_steps`` optimizer steps (default: the current step)."""
        s = self.num_steps if num_steps is None else num_steps
        max_lr, min_lr, warmup = self.max_lr, self.min_lr, self.lr_warmup_steps
        if warmup > 0 and s <= warmup:
            return self.lr_warmup_init + (max_lr - self.lr_warmup_init) * s / warmup
        if self.lr_decay_style == "constant":
            return max_lr
        if self.lr_decay_steps is not None and s > self.lr_decay_steps:
            return min_lr
        if self.lr_decay_style == "inverse-square-root":
            return max(min_lr, max_lr * math.sqrt(max(warmup, 1) / max(s, 1)))
        assert self.lr_decay_steps is not None
        if self.lr_decay_style == "WSD":
            assert self.wsd_decay_steps is not None
            anneal_start = self.lr_decay_steps - self.wsd_decay_steps
            if s <= anneal_start:
                return max_lr
            coeff = _wsd_coeff(self.lr_wsd_decay_style, (s - anneal_start) / self.wsd_decay_steps)
            return min_lr + coeff * (max_lr - min_lr)
        decay_span = self.lr_decay_steps - warmup
        ratio = (s - warmup) / decay_span if decay_span > 0 else 1.0
        if self.lr_decay_style == "linear":
            coeff = 1.0 - ratio
        else:  # cosine
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return min_lr + coeff * (max_lr - min_lr)

    def get_wd(self, num_steps: int | None = None) -> float | None:
        """Weight decay of the decaying groups after ``num_steps`` steps, or None when weight decay is not scheduled."""
        if not self.wd_enabled:
            return None
        s = self.num_steps if num_steps is None else num_steps
        start, end = self.start_weight_decay, self.end_weight_decay
        assert start is not None and end is not None
        incr_steps = self.weight_decay_incr_steps
        if self.weight_decay_incr_style == "constant" or incr_steps is None or s >= incr_steps:
            return end
        ratio = s / incr_steps
        if self.weight_decay_incr_style == "linear":
            coeff = ratio
        else:  # cosine: slow start, slow finish
            coeff = 0.5 * (math.cos(math.pi * (1.0 - ratio)) + 1.0)
        return start + coeff * (end - start)

    def _apply(self) -> None:
        lr = self.get_lr()
        wd = self.get_wd()
        for group, scale, decays in zip(self.optimizer.param_groups, self._lr_scales, self._decays):
            group["lr"] = lr * scale
            if wd is not None and decays:
                group["weight_decay"] = wd

    # --- torch-style API ---------------------------------------------------------------------------------------
    def step(self, increment: int = 1) -> None:
        """Advance by ``increment`` optimizer steps and set the groups' lr (and weight decay)."""
        self.num_steps += increment
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The lr of every param group, as last set."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def _settings(self) -> dict[str, Any]:
        return {
            "max_lr": self.max_lr,
            "min_lr": self.min_lr,
            "lr_warmup_steps": self.lr_warmup_steps,
            "lr_warmup_init": self.lr_warmup_init,
            "lr_decay_steps": self.lr_decay_steps,
            "lr_decay_style": self.lr_decay_style,
            "wsd_decay_steps": self.wsd_decay_steps,
            "lr_wsd_decay_style": self.lr_wsd_decay_style,
            "start_weight_decay": self.start_weight_decay,
            "end_weight_decay": self.end_weight_decay,
            "weight_decay_incr_steps": self.weight_decay_incr_steps,
            "weight_decay_incr_style": self.weight_decay_incr_style,
        }

    def state_dict(self) -> dict[str, Any]:
        """Step counter plus the settings it ran with (plain Python values: safe for ``torch.save``)."""
        return {"num_steps": self.num_steps, **self._settings()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume at the saved step. The current settings win; a changed setting is logged as a warning."""
        saved = {k: v for k, v in state_dict.items() if k != "num_steps"}
        changed = {k: (v, saved[k]) for k, v in self._settings().items() if k in saved and saved[k] != v}
        if changed:
            described = ", ".join(f"{k}: checkpoint {old!r} -> config {new!r}" for k, (new, old) in changed.items())
            logger.warning("LR scheduler settings differ from the checkpoint; using the config's: %s", described)
        self.num_steps = int(state_dict["num_steps"])
        self._apply()

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self._settings().items())
        return f"OptimizerParamScheduler(num_steps={self.num_steps}, {settings})"


def _wsd_coeff(style: str, ratio: float) -> float:
    if style == "linear":
        return 1.0 - ratio
    if style == "cosine":
        return 0.5 * (math.cos(math.pi * ratio) + 1.0)
    if style == "exponential":
        # 1 at the start of the decay, 0 at its end.
        return 2.0 * 0.5**ratio - 1.0
    return 1.0 - math.sqrt(ratio)  # minus_sqrt
