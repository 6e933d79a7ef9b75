"""Loss functions over already-shifted labels (see docs/architecture.md, "Data contract")."""

from automodel.components.loss.linear_ce import FusedLinearCrossEntropy
from automodel.components.loss.masked_ce import LossError, MaskedCrossEntropy

__all__ = ["FusedLinearCrossEntropy", "LossError", "MaskedCrossEntropy"]
