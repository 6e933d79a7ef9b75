"""Keeping secrets read from the environment (`${HF_TOKEN}` in a config) out of every message a run prints or logs.

The config component offers each value it substitutes from an environment variable; a secret (a variable named like
one, or a value shaped like a token) is then shown as its placeholder in every log record (through a log-record
factory, so any logger and any handler) and every `error:` line. Saved configs keep their placeholders anyway
(`ConfigNode.to_yaml`), and validation errors print the placeholder of any value that came from the environment;
this covers everything else. Ordinary values (`${DATA_DIR}` = /data/train) stay readable in logs.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

# Shorter values are not redacted: replacing every "8" or "true" in every message would garble them, and a value that
# short is no secret.
MIN_SECRET_LENGTH = 6
_SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSW|PASSPHRASE|API_?KEY|ACCESS_?KEY|PRIVATE|CREDENTIAL|AUTH|COOKIE|SESSION", re.I
)
# Token-shaped: one long word of letters and digits (hf_..., sk-..., a hex or base64 key), not a path or a sentence.
_TOKEN_VALUE = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9_\-+=.]{20,}$")


def looks_secret(name: str, value: str) -> bool:
    return bool(_SECRET_NAME.search(name) or _TOKEN_VALUE.match(value))


_lock = threading.Lock()
_secrets: dict[str, str] = {}  # value -> what to show instead ("${HF_TOKEN}")
_factory_installed = False


def register_env_value(name: str, value: str) -> None:
    """A value read from environment variable `name`: if it looks secret, never show it again (`${name}` instead)."""
    if isinstance(value, str) and looks_secret(name, value):
        register_secret(value, f"${{{name}}}")


def register_secret(value: str, shown_as: str) -> None:
    """From now on, show `shown_as` wherever `value` would appear in a log record or an error line."""
    global _factory_installed
    if not isinstance(value, str) or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        _secrets[value] = shown_as
        if not _factory_installed:
            _install_record_factory()
            _factory_installed = True


def has_secrets() -> bool:
    return bool(_secrets)


def redact(text: str) -> str:
    """`text` with every registered value replaced by its placeholder (longest first)."""
    if not _secrets or not isinstance(text, str):
        return text
    for value in sorted(_secrets, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _secrets[value])
    return text


def _install_record_factory() -> None:
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        return record

    logging.setLogRecordFactory(factory)
