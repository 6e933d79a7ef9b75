"""Errors raised for mistakes in a config file, a CLI override or a `_target_`."""

from __future__ import annotations

from automodel._shared.errors import UserError


class ConfigError(UserError):
    """A config mistake; the message names the dotted key, what was expected and how to fix it."""


class ConfigValidationError(ConfigError):
    """Every problem found by `validate_config`, reported at once (one line per problem in `.errors`)."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"{len(self.errors)} problem(s) in the config:\n{lines}")
