"""Tiny dependency-free helpers that every layer may import."""

from automodel._shared.errors import USER_ERROR_EXIT_CODE, UserError, exit_on_user_error

__all__ = ["USER_ERROR_EXIT_CODE", "UserError", "exit_on_user_error"]
