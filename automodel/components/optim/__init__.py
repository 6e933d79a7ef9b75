"""LR / weight-decay schedule and optimizer param groups."""

from automodel.components.optim.builders import DEFAULT_NO_DECAY_PATTERNS, build_lr_scheduler, build_param_groups
from automodel.components.optim.scheduler import (
    LR_DECAY_STYLES,
    WEIGHT_DECAY_INCR_STYLES,
    WSD_DECAY_STYLES,
    OptimError,
    OptimizerParamScheduler,
)

__all__ = [
    "DEFAULT_NO_DECAY_PATTERNS",
    "LR_DECAY_STYLES",
    "WEIGHT_DECAY_INCR_STYLES",
    "WSD_DECAY_STYLES",
    "OptimError",
    "OptimizerParamScheduler",
    "build_lr_scheduler",
    "build_param_groups",
]
