"""Whole-config validation: bind every section to its callable's signature and report every problem at once."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from automodel._shared.errors import UserError
from automodel.components.config._allowlist import CONFIG_CLASS, category
from automodel.components.config._errors import ConfigError, ConfigValidationError
from automodel.components.config._instantiate import (
    TARGET_KEY,
    accepted_names,
    code_loading_problem,
    has_var_keyword,
    node_policy,
    target_name,
)
from automodel.components.config._node import ConfigNode, child_path
from automodel.components.config._scalars import parse_literal
from automodel.components.config._schema import Section
from automodel.components.config._static import static_signature
from automodel.components.config._targets import TargetPolicy, parse_target, resolve_target

logger = logging.getLogger(__name__)

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def validate_config(
    cfg: ConfigNode,
    schema: Mapping[str, Section],
    checks: Iterable[Callable[[ConfigNode], list[str]]] = (),
    *,
    policy: TargetPolicy | None = None,
) -> None:
    """Raise one ConfigValidationError listing every problem: unknown keys, missing or mistyped arguments, bad
    targets, code-loading keys, and whatever the recipe-level `checks` report.

    Runs nothing: allowlisted targets are imported (our code and the libraries we depend on) to read their
    signatures, but never called; targets the user opted into are read from their source (`_static.py`), not imported.
    The only objects constructed are our own config dataclasses, to run their value checks.
    """
    policy = node_policy(cfg, policy)
    errors: list[str] = []
    _scan_code_loading(cfg, "", policy, errors)
    known = list(schema)
    for key in cfg:
        if key not in schema:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(f"{key}: unknown top-level section{hint}; known sections: {', '.join(known)}")
    for name, section in schema.items():
        value = cfg.get(name)
        if value is None:
            if section.required:
                errors.append(f"{name}: required section is missing; add a '{name}:' section to the config")
            continue
        if isinstance(value, Mapping):
            errors.extend(section.shadowing_problems(value, name, cfg))
            _check_section(value, section.default_target, section.provided, section.ignore, name, policy, errors)
        else:
            _scan(value, name, name, policy, errors)
    for check in checks:
        errors.extend(_run_check(check, cfg))
    if errors:
        raise ConfigValidationError(errors)


def _run_check(check: Callable[[ConfigNode], list[str]], cfg: ConfigNode) -> list[str]:
    name = getattr(check, "__name__", repr(check))
    try:
        found = check(cfg)
    except UserError as exc:
        return [str(exc)]
    except Exception as exc:  # a broken check must not hide the other problems
        return [f"check '{name}' raised {type(exc).__name__}: {exc}"]
    return [str(e) for e in (found or [])]


def _check_section(
    node: Mapping[str, Any],
    default_target: Callable[..., Any] | None,
    provided: frozenset[str],
    ignore: frozenset[str],
    path: str,
    policy: TargetPolicy,
    errors: list[str],
    partial: bool = False,
) -> None:
    target: Callable[..., Any] | None = default_target
    # Our own config dataclasses may be constructed to run their value checks; nothing else is ever called.
    constructible = default_target is not None and getattr(default_target, "__module__", "").startswith("automodel.")
    signature = None
    if TARGET_KEY in node:
        target, signature, constructible = _inspect_target(
            node[TARGET_KEY], policy, child_path(path, TARGET_KEY), errors
        )
    keys = [k for k in node if k != TARGET_KEY and k not in ignore]
    if target is not None:
        signature = _signature(target)
    if signature is not None:
        before = len(errors)
        _bind_keys(node, keys, target, signature, provided | ignore, path, errors, partial=partial)
        if len(errors) == before and target is not None and constructible and not partial:
            _check_dataclass_values(node, keys, target, provided, errors)
    for key in node:
        if key != TARGET_KEY:
            _scan(node[key], child_path(path, key), key, policy, errors)


def _inspect_target(
    value: Any, policy: TargetPolicy, key: str, errors: list[str]
) -> tuple[Callable[..., Any] | None, inspect.Signature | None, bool]:
    """(target object, static signature, constructible) for a `_target_` value, without running code outside the
    allowlist: an opted-in target is read from its source and never imported."""
    try:
        parsed = parse_target(value, policy=policy, key=key)
        if parsed.listed:
            ours = category(parsed.dotted) == CONFIG_CLASS and parsed.dotted.startswith("automodel.")
            return resolve_target(value, policy=policy, key=key), None, ours
    except ConfigError as exc:
        errors.append(str(exc))
        return None, None, False
    loaded = None if parsed.is_file else _already_imported(parsed.dotted)
    if loaded is not None:  # its module was imported before: reading an attribute imports and runs nothing new
        return loaded, None, False
    signature = static_signature(parsed.dotted, file_path=parsed.file_path, symbol=parsed.symbol)
    if signature is None:
        logger.warning(
            "%s: %r is outside the allowlist (you allowed it); validate runs no code outside the allowlist and could "
            "not read its signature from the source, so the keys of this section are not checked",
            key,
            parsed.text,
        )
    return None, signature, False


def _already_imported(dotted: str) -> Callable[..., Any] | None:
    parts = dotted.split(".")
    for n in range(len(parts) - 1, 0, -1):
        module = sys.modules.get(".".join(parts[:n]))
        if module is None:
            continue
        obj: Any = module
        for part in parts[n:]:
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj if callable(obj) else None
    return None


def _scan_code_loading(value: Any, path: str, policy: TargetPolicy, errors: list[str]) -> None:
    """`trust_remote_code: true`, `weights_only: false`... anywhere in the config (any section, any depth)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = child_path(path, key) if isinstance(key, str) else f"{path}[{key!r}]"
            problem = code_loading_problem(key, item, where, policy)
            if problem:
                errors.append(problem)
            _scan_code_loading(item, where, policy, errors)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _scan_code_loading(item, child_path(path, i), policy, errors)


def _check_dataclass_values(
    node: Mapping[str, Any], keys: list[str], target: Callable[..., Any], provided: frozenset[str], errors: list[str]
) -> None:
    """Build a plain config dataclass (no runtime arguments, no nested targets) so its own value checks run now,
    before anything heavy: e.g. `checkpoint.keep_last_n: 0` or `packed_sequence.split_across_pack: true`."""
    if not (isinstance(target, type) and dataclasses.is_dataclass(target)) or provided:
        return
    raw = node.to_dict() if hasattr(node, "to_dict") else dict(node)
    if any(isinstance(value, Mapping) and TARGET_KEY in value for value in raw.values()):
        return
    try:
        target(**{key: raw[key] for key in keys})
    except UserError as exc:  # the dataclass names the key in its message
        errors.append(str(exc))
    except Exception:  # anything else is the target's business at build time, not a config problem
        pass


def _bind_keys(
    node: Mapping[str, Any],
    keys: list[str],
    target: Callable[..., Any] | None,
    signature: inspect.Signature,
    provided: frozenset[str],
    path: str,
    errors: list[str],
    partial: bool = False,
) -> None:
    accepted = accepted_names(signature)
    hints = _type_hints(target, signature) if target is not None else {}  # a static signature has no types
    params = signature.parameters
    for key in keys:
        param = params.get(key)
        if param is None or param.kind not in _KEYWORD_KINDS or key == "self":
            if not has_var_keyword(signature):
                close = difflib.get_close_matches(key, accepted, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                listed = ", ".join(accepted) or "(no keyword arguments)"
                errors.append(f"{child_path(path, key)}: unknown key{hint}; accepted: {listed}")
            continue
        value = node[key]
        if _is_built_later(key, value):
            continue
        annotation = hints.get(key, param.annotation) if target is not None else inspect.Parameter.empty
        problem = _type_problem(value, annotation, param.default, shown=_shown(node, key))
        if problem:
            errors.append(f"{child_path(path, key)}: {problem}")
    for param in [] if partial else params.values():
        if (
            param.kind in _KEYWORD_KINDS
            and param.default is inspect.Parameter.empty
            and param.name != "self"
            and param.name not in node
            and param.name not in provided
        ):
            owner = target_name(target) if target is not None else repr(node.get(TARGET_KEY))
            errors.append(
                f"{child_path(path, param.name)}: missing required argument of {owner}; "
                f"add '{param.name}: ...' under '{path}'"
            )


def _is_built_later(key: str, value: Any) -> bool:
    """Values instantiate() turns into something else: nested targets and `*_fn` strings."""
    if isinstance(value, Mapping) and TARGET_KEY in value:
        return True
    return key.endswith("_fn") and isinstance(value, str)


def _scan(value: Any, path: str, key: str | None, policy: TargetPolicy, errors: list[str]) -> None:
    """Find nested `_target_` sections and `*_fn` strings below a value and check them."""
    if isinstance(value, Mapping):
        if TARGET_KEY in value:
            # `collate_fn: {_target_: ...}` is a partial: its per-call arguments (the batch) come later
            partial = key is not None and key.endswith("_fn")
            _check_section(value, None, frozenset(), frozenset(), path, policy, errors, partial=partial)
            return
        for k, v in value.items():
            _scan(v, child_path(path, k), k if isinstance(k, str) else None, policy, errors)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _scan(item, child_path(path, i), None, policy, errors)
    elif key is not None and key.endswith("_fn") and isinstance(value, str):
        try:
            if parse_target(value, policy=policy, key=path).listed:
                resolve_target(value, policy=policy, key=path)  # our code or a library: safe to import
        except ConfigError as exc:
            errors.append(str(exc))


# --- signatures and annotations -------------------------------------------------------------------------------
def _signature(target: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None  # unreadable (some builtins): accept whatever the config says


def _type_hints(target: Callable[..., Any], signature: inspect.Signature) -> dict[str, Any]:
    """Resolved annotations per parameter (handles `from __future__ import annotations`).

    When `typing.get_type_hints` fails as a whole (one name only imported under TYPE_CHECKING), each string
    annotation is evaluated on its own; those that still fail are skipped, never reported.
    """
    function = target.__init__ if inspect.isclass(target) else getattr(target, "__func__", target)  # type: ignore[misc]
    function = inspect.unwrap(function)
    candidates = [target, function] if dataclasses.is_dataclass(target) else [function]
    for candidate in candidates:
        try:
            return typing.get_type_hints(candidate)
        except Exception:  # unresolvable forward references and the like
            continue
    namespace = dict(getattr(function, "__globals__", {}))
    hints: dict[str, Any] = {}
    for param in signature.parameters.values():
        annotation = param.annotation
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, namespace)  # what get_type_hints does, one name at a time
            except Exception:
                continue
        hints[param.name] = annotation
    return hints


_SIMPLE = (bool, int, float, str, list, tuple, dict)


def _matches(value: Any, annotation: Any) -> bool | None:
    """True / False, or None when the annotation is too complex to judge (never a false error)."""
    if annotation is None or annotation is type(None):
        return value is None
    if isinstance(annotation, str):
        return None
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _matches(value, typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        results = [_matches(value, arg) for arg in typing.get_args(annotation)]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if origin is typing.Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(annotation))
    outer = origin if origin in (list, tuple, dict) else annotation
    if _is_tensor_class(outer):
        # A YAML value is never a tensor (torch optimizers annotate `lr: float | Tensor`).
        return False if isinstance(value, (str, int, float, bool, list, Mapping)) else None
    if outer not in _SIMPLE:
        return None
    if outer is bool:
        return isinstance(value, bool)
    if outer is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if outer is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if outer is str:
        return isinstance(value, str)
    if outer in (list, tuple):
        return isinstance(value, (list, tuple))  # YAML has no tuples: a list is fine for `tuple[float, float]`
    return isinstance(value, Mapping)


def _is_tensor_class(annotation: Any) -> bool:
    # Checked by name: this component does not import torch.
    return getattr(annotation, "__module__", None) == "torch" and getattr(annotation, "__name__", None) == "Tensor"


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if annotation is None or annotation is type(None):
        return "None"
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in typing.get_args(annotation))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(annotation))
    if origin is typing.Annotated:
        return _describe(typing.get_args(annotation)[0])
    if origin in (list, tuple):
        return "a list"
    if origin is dict or annotation is dict:
        return "a mapping"
    if annotation in (list, tuple):
        return "a list"
    return getattr(annotation, "__name__", repr(annotation))


def _literal_choices(annotation: Any) -> tuple[Any, ...]:
    """The choices of `Literal[...]`, also inside `Literal[...] | None` (None then counts as a choice)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        parts = [_literal_choices(arg) if arg is not type(None) else (None,) for arg in typing.get_args(annotation)]
        if all(parts) and any(p != (None,) for p in parts):
            return tuple(c for part in parts for c in part)
    return ()


def _shown(node: Mapping[str, Any], key: str) -> str:
    """repr of the value as written: a `${VAR}` placeholder stays a placeholder, so an error never prints a secret."""
    raw = getattr(node, "_raw", None)
    if isinstance(node, ConfigNode) and isinstance(raw, dict) and key in raw:
        return repr(str(raw[key]))
    return repr(node[key])


def _type_problem(value: Any, annotation: Any, default: Any, shown: str | None = None) -> str | None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if value is None and default is None:
        return None  # `x: int = None` is common in libraries; None is clearly meant to be accepted
    if _matches(value, annotation) is not False:
        return None
    shown = repr(value) if shown is None else shown
    choices = _literal_choices(annotation)
    if choices and isinstance(value, str):
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1) if shown == repr(value) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{shown} is not one of {', '.join(repr(c) for c in choices)}{hint}"
    problem = f"expected {_describe(annotation)}, got {type(value).__name__} {shown}"
    if isinstance(value, str) and _matches(parse_literal(value), annotation) is True:
        problem += " (quoted in the YAML? remove the quotes)"
    return problem
