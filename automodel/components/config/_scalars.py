"""Scalar handling shared by the YAML loader and CLI overrides: literal parsing and `${VAR}` interpolation."""

from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from typing import Any

from automodel._shared.redact import register_env_value
from automodel.components.config._errors import ConfigError

# `${VAR}` or `${VAR,default}`; the default runs to the first `}` (so it cannot itself contain one). The reference
# system's configs spell the same thing the OmegaConf way, `${oc.env:VAR}` / `${oc.env:VAR,default}`.
PLACEHOLDER = re.compile(r"\$\{(?:oc\.env:)?([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")

_NONE_WORDS = {"none", "null", "~"}
_BOOL_WORDS = {"true": True, "false": False}
_FLOAT_WORDS = {"inf": float("inf"), "+inf": float("inf"), "-inf": float("-inf"), "nan": float("nan")}
# Only text starting like a number or a container is handed to ast.literal_eval: a plain word never becomes a
# Python object by accident ("..." would otherwise be Ellipsis, "b'x'" bytes, "3j" a complex number).
_LITERAL_START = set("0123456789+-.[({'\"")
_LITERAL_TYPES = (bool, int, float, str, list, tuple, dict, set, type(None))


def parse_literal(text: str) -> Any:
    """Parse `text` like an unquoted YAML scalar / CLI value; text that is no literal comes back unchanged."""
    stripped = text.strip()
    lowered = stripped.lower()
    if lowered in _NONE_WORDS:
        return None
    if lowered in _BOOL_WORDS:
        return _BOOL_WORDS[lowered]
    if lowered in _FLOAT_WORDS:
        return _FLOAT_WORDS[lowered]
    if not stripped or stripped[0] not in _LITERAL_START:
        return text
    try:
        value = ast.literal_eval(stripped)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text
    return value if _is_plain_data(value) else text


def _is_plain_data(value: Any) -> bool:
    if isinstance(value, (list, tuple, set)):
        return all(_is_plain_data(v) for v in value)
    if isinstance(value, dict):
        return all(_is_plain_data(k) and _is_plain_data(v) for k, v in value.items())
    return isinstance(value, _LITERAL_TYPES) and not isinstance(value, complex)


def has_placeholder(text: str) -> bool:
    return PLACEHOLDER.search(text) is not None


@dataclass(frozen=True)
class Template:
    """A string holding `${VAR}` placeholders, as written; `plain` is True for unquoted YAML / CLI values."""

    text: str
    plain: bool


def resolve_template(template: Template, key: str) -> Any:
    """Substitute environment variables; a plain scalar that is one whole placeholder is then literal-parsed."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value is not None:
            register_env_value(name, value)  # a secret is never printed again: errors and logs show the placeholder
            return value
        if default is not None:
            return default.strip()
        raise ConfigError(
            f"{key or '<config>'}: environment variable '{name}' is not set (used in {template.text!r}); "
            f"export {name}=... or give a default: ${{{name},default}}"
        )

    resolved = PLACEHOLDER.sub(substitute, template.text)
    whole = PLACEHOLDER.fullmatch(template.text.strip()) is not None
    return parse_literal(resolved) if template.plain and whole else resolved
