"""The one exception type that means "the user can fix this", and the entry-point wrapper that reports it.

Every component raises a subclass of :class:`UserError` for mistakes in configs, files or data. Entry points wrap
their main function with :func:`exit_on_user_error`, which prints the message on one line (no traceback) and exits
with status 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import TypeVar

from automodel._shared.redact import has_secrets, redact

T = TypeVar("T")

USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """A mistake the user can fix: the message says what is wrong and how to fix it."""


def exit_on_user_error(fn: Callable[[], T]) -> T:
    """Call `fn`; on a UserError print `error: <message>` to stderr and exit with status 2.

    Values read from the environment (secrets) are replaced by their `${VAR}` placeholder in what is printed, also in
    the traceback of an unexpected error.
    """
    try:
        return fn()
    except UserError as err:
        print(f"error: {redact(str(err))}", file=sys.stderr, flush=True)
        raise SystemExit(USER_ERROR_EXIT_CODE) from None
    except Exception:
        if not has_secrets():
            raise
        print(redact(traceback.format_exc()), file=sys.stderr, end="", flush=True)
        raise SystemExit(1) from None
