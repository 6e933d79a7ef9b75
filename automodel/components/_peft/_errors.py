"""The error type of the PEFT component."""

from __future__ import annotations

from automodel._shared.errors import UserError


class PeftError(UserError):
    """A PEFT config, adapter folder or merge request the user can fix (the message says how)."""
