"""Training-loop parts: step scheduling (batches, accumulation, cadence), RNG state, pre-emption signals,
mixed precision, and throughput / MFU / memory metrics."""

from automodel.components.training.errors import TrainingError
from automodel.components.training.precision import ClipGradNormConfig, MixedPrecisionConfig
from automodel.components.training.rng import StatefulRNG
from automodel.components.training.signals import ShutdownSignal
from automodel.components.training.step_scheduler import StepScheduler
from automodel.components.training.throughput import (
    ThroughputMeter,
    default_peak_flops,
    flops_per_token,
    mfu,
    peak_memory_gib,
)

__all__ = [
    "ClipGradNormConfig",
    "MixedPrecisionConfig",
    "ShutdownSignal",
    "StatefulRNG",
    "StepScheduler",
    "ThroughputMeter",
    "TrainingError",
    "default_peak_flops",
    "flops_per_token",
    "mfu",
    "peak_memory_gib",
]
