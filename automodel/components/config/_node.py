"""`ConfigNode`: a mutable mapping with attribute access, dotted paths and placeholder-preserving export."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import yaml

from automodel.components.config._errors import ConfigError
from automodel.components.config._scalars import Template, parse_literal, resolve_template

if TYPE_CHECKING:
    from automodel.components.config._targets import TargetPolicy

_MISSING = object()


class RawText(str):
    """The text of a value as written in the config (placeholders kept); `plain` means it was unquoted."""

    plain: bool

    def __new__(cls, text: str, plain: bool = True) -> RawText:
        obj = super().__new__(cls, text)
        obj.plain = plain
        return obj


def child_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    return f"{parent}.{key}" if parent else key


class ConfigNode(MutableMapping[str, Any]):
    """One mapping of a config: `cfg.model.name`, `cfg["model"]`, `cfg.get("a.b", default)`, `cfg.set("a.b", v)`.

    Nested mappings are ConfigNodes, lists stay lists. Values read from `${VAR}` placeholders are stored resolved
    and remember their raw text, so `to_yaml()` / `to_dict(raw=True)` / `repr` never show a secret. Attribute
    access cannot reach keys named like a method or property (`path`, `get`, `items`...): use `cfg["path"]`.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, *, path: str = "") -> None:
        object.__setattr__(self, "_data", {})
        object.__setattr__(self, "_raw", {})
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_policy", None)
        for key, value in (data or {}).items():
            self[key] = value

    # --- mapping protocol -------------------------------------------------------------------------------------
    _data: dict[str, Any]
    _raw: dict[str, Any]
    _path: str
    _policy: TargetPolicy | None

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            where = f"under '{self._path}'" if self._path else "at the top level"
            raise ConfigError(f"config key {key!r} {where} is not a string; quote it in the YAML ('{key}':)")
        resolved, raw = _convert(value, child_path(self._path, key), self._policy)
        self._data[key] = resolved
        if raw is _MISSING:
            self._raw.pop(key, None)
        else:
            self._raw[key] = raw

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self._raw.pop(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    # --- attribute access -------------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; private names must fail fast so copy/pickle never recurse.
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(self._missing_key_message(name)) from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or hasattr(type(self), name):
            raise AttributeError(
                f"cannot set attribute {name!r} on a ConfigNode; use item access: node[{name!r}] = ..."
            )
        self[name] = value

    def __delattr__(self, name: str) -> None:
        if name not in self._data:
            raise AttributeError(self._missing_key_message(name))
        del self[name]

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self._data if k.isidentifier()})

    def _missing_key_message(self, name: str) -> str:
        keys = list(self._data)
        close = difflib.get_close_matches(name, keys, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        where = f"under '{self._path}'" if self._path else "at the top level"
        listed = ", ".join(keys) if keys else "none"
        return f"config key '{child_path(self._path, name)}' does not exist{hint}; keys {where}: {listed}"

    # --- dotted paths -----------------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        """Dotted path of this node from the root ("" for the root), used in error messages."""
        return self._path

    def get(self, key: str, default: Any = None) -> Any:
        """Value at a dotted path (`"step_scheduler.max_steps"`, list items as `"a.0"`), or `default`."""
        if key in self._data:
            return self._data[key]
        current: Any = self
        for part in key.split("."):
            if isinstance(current, ConfigNode) and part in current._data:
                current = current._data[part]
            elif isinstance(current, (list, tuple)) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                return default
        return current

    def set(self, key: str, value: Any) -> None:
        """Set a dotted path, creating intermediate mappings; a scalar or list in the way is a ConfigError."""
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"invalid config key {key!r}: expected dotted names like 'optimizer.lr'")
        node: ConfigNode = self
        for i, part in enumerate(parts[:-1]):
            nxt = node._data.get(part)
            if nxt is None:
                # A missing or null section becomes a mapping: `--peft.dim 8` on `peft: null` enables it.
                node[part] = {}
                nxt = node._data[part]
            if not isinstance(nxt, ConfigNode):
                here = child_path(self._path, ".".join(parts[: i + 1]))
                raise ConfigError(
                    f"cannot set '{child_path(self._path, key)}': '{here}' holds {nxt!r}, not a mapping; "
                    f"override '{here}' as a whole instead"
                )
            node = nxt
        node[parts[-1]] = value

    # --- export -----------------------------------------------------------------------------------------------
    def to_dict(self, raw: bool = False) -> dict[str, Any]:
        """Plain nested dicts/lists; `raw=True` gives `${VAR}` placeholders instead of their values."""
        return self._export(raw=raw, markers=False)

    def to_yaml(self, raw: bool = True) -> str:
        """YAML text that reloads to the same config; placeholders are kept unless `raw=False`."""
        return yaml.dump(
            self._export(raw=raw, markers=True),
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
        )

    def _export(self, *, raw: bool, markers: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._data.items():
            if raw and key in self._raw:
                value = self._raw[key]
            out[key] = _export_value(value, raw=raw, markers=markers)
        return out

    def copy(self) -> ConfigNode:
        """Deep copy of the node tree (nodes, lists and dicts are copied; leaf objects are shared)."""
        new = ConfigNode(path=self._path)
        object.__setattr__(new, "_policy", self._policy)
        for key, value in self._data.items():
            new._data[key] = _copy_value(value)
        for key, value in self._raw.items():
            new._raw[key] = _copy_value(value)
        return new

    def __copy__(self) -> ConfigNode:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> ConfigNode:
        return self.copy()

    def __repr__(self) -> str:
        # Raw values: a repr ends up in logs, and must not carry a secret read from the environment.
        body = repr(self.to_dict(raw=True))
        return f"ConfigNode(path={self._path!r}, {body})" if self._path else f"ConfigNode({body})"

    def _set_policy(self, policy: TargetPolicy | None) -> None:
        """Attach the target policy the config was loaded with to every node (instantiate/validate default to it)."""
        object.__setattr__(self, "_policy", policy)
        for value in self._data.values():
            _walk_nodes(value, lambda node: node._set_policy(policy))


def _convert(value: Any, path: str, policy: TargetPolicy | None) -> tuple[Any, Any]:
    """(stored value, raw form or _MISSING): mappings become nodes, templates are resolved and remembered."""
    if isinstance(value, Template):
        return resolve_template(value, path), RawText(value.text, value.plain)
    if isinstance(value, Mapping):
        node = ConfigNode(path=path)
        object.__setattr__(node, "_policy", policy)
        source = value._data if isinstance(value, ConfigNode) else value
        for key, item in source.items():
            if isinstance(value, ConfigNode) and key in value._raw:
                # Keep the raw form when copying a node in from elsewhere.
                node._data[key] = _copy_value(item)
                node._raw[key] = _copy_value(value._raw[key])
            else:
                node[key] = item
        return node, _MISSING
    if isinstance(value, (list, tuple)):
        pairs = [_convert(item, child_path(path, i), policy) for i, item in enumerate(value)]
        resolved = [p[0] for p in pairs]
        has_raw = any(p[1] is not _MISSING for p in pairs)
        raw = [p[0] if p[1] is _MISSING else p[1] for p in pairs]
        if isinstance(value, tuple):
            return tuple(resolved), (tuple(raw) if has_raw else _MISSING)
        return resolved, (raw if has_raw else _MISSING)
    return value, _MISSING


def _export_value(value: Any, *, raw: bool, markers: bool) -> Any:
    if isinstance(value, ConfigNode):
        return value._export(raw=raw, markers=markers)
    if isinstance(value, (list, tuple)):
        items = [_export_value(v, raw=raw, markers=markers) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        return {k: _export_value(v, raw=raw, markers=markers) for k, v in value.items()}
    if isinstance(value, RawText) and not markers:
        return str(value)
    return value


def _copy_value(value: Any) -> Any:
    if isinstance(value, ConfigNode):
        return value.copy()
    if isinstance(value, list):
        return [_copy_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    return value


def _walk_nodes(value: Any, fn: Any) -> None:
    if isinstance(value, ConfigNode):
        fn(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk_nodes(item, fn)


# --- YAML output ------------------------------------------------------------------------------------------------
class _Dumper(yaml.SafeDumper):
    """Quotes every string our loader would otherwise read back as something else (`none`, `1e-5`, `(1, 2)`)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    parsed = parse_literal(data)
    must_quote = not (isinstance(parsed, str) and parsed == data)
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="'" if must_quote else None)


def _represent_raw(dumper: yaml.SafeDumper, data: RawText) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style=None if data.plain else "'")


def _represent_tuple(dumper: yaml.SafeDumper, data: tuple[Any, ...]) -> yaml.Node:
    return dumper.represent_list(list(data))


def _represent_other(dumper: yaml.SafeDumper, data: Any) -> yaml.Node:
    # Objects a recipe stored in the config (a dtype, a path) are written as text rather than crashing a save.
    return _represent_str(dumper, str(data))


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(RawText, _represent_raw)
_Dumper.add_representer(tuple, _represent_tuple)
_Dumper.add_multi_representer(object, _represent_other)
