"""The error raised for models and tokenizers that cannot be loaded for a reason the user can fix."""

from automodel._shared.errors import UserError


class ModelLoadError(UserError):
    """A model or tokenizer could not be loaded: a missing path, an unreachable hub id, a refused option..."""
