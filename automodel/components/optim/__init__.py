"""Optimizers (fused/foreach AdamW with param groups, Muon, SOAP) and the LR / weight-decay schedule."""

from automodel.components.optim.builders import OPTIMIZERS, build_lr_scheduler, build_optimizer, build_param_groups
from automodel.components.optim.muon import DEFAULT_ADAMW_PATTERNS, Muon, newton_schulz
from automodel.components.optim.param_groups import DEFAULT_NO_DECAY_PATTERNS, build_named_param_groups
from automodel.components.optim.scheduler import (
    LR_DECAY_STYLES,
    WEIGHT_DECAY_INCR_STYLES,
    WSD_DECAY_STYLES,
    OptimError,
    OptimizerParamScheduler,
)
from automodel.components.optim.soap import SOAP

__all__ = [
    "DEFAULT_ADAMW_PATTERNS",
    "DEFAULT_NO_DECAY_PATTERNS",
    "LR_DECAY_STYLES",
    "OPTIMIZERS",
    "SOAP",
    "WEIGHT_DECAY_INCR_STYLES",
    "WSD_DECAY_STYLES",
    "Muon",
    "OptimError",
    "OptimizerParamScheduler",
    "build_lr_scheduler",
    "build_named_param_groups",
    "build_optimizer",
    "build_param_groups",
    "newton_schulz",
]
