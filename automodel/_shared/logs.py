"""A log handler that writes to the *current* `sys.stderr`."""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO


class CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to `sys.stderr` as it is at that moment, not as it was when logging was set up: a program
    that replaces stderr (a test harness, a notebook, a redirect) never gets a handler holding a closed stream."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass
