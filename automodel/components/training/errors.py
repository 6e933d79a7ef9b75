"""The error type of the training component."""

from automodel._shared.errors import UserError


class TrainingError(UserError):
    """A training setting the user can fix (batch sizes, step counts, seeds)."""
