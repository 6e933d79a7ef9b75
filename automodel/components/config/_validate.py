"""Whole-config validation: bind every section to its callable's signature and report every problem at once."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from automodel._shared.errors import UserError
from automodel.components.config._errors import ConfigError, ConfigValidationError
from automodel.components.config._instantiate import (
    TARGET_KEY,
    accepted_names,
    has_var_keyword,
    node_policy,
    target_name,
)
from automodel.components.config._node import ConfigNode, child_path
from automodel.components.config._scalars import parse_literal
from automodel.components.config._targets import TargetPolicy, resolve_target

_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


@dataclass(frozen=True)
class Section:
    """How the recipe builds one top-level section, for `validate_config`."""

    default_target: Callable[..., Any] | None = None  # used when the section has no _target_ (e.g. a config dataclass)
    provided: frozenset[str] = frozenset()  # kwargs the recipe passes at build time (tokenizer, params, dataset...)
    required: bool = False
    ignore: frozenset[str] = frozenset()  # keys the recipe consumes itself (not passed to the target)

    def __post_init__(self) -> None:
        # Accept any collection (or one name) for convenience; store frozensets.
        for name in ("provided", "ignore"):
            value = getattr(self, name)
            object.__setattr__(self, name, frozenset([value] if isinstance(value, str) else value))


def validate_config(
    cfg: ConfigNode,
    schema: Mapping[str, Section],
    checks: Iterable[Callable[[ConfigNode], list[str]]] = (),
    *,
    policy: TargetPolicy | None = None,
) -> None:
    """Raise one ConfigValidationError listing every problem: unknown keys, missing or mistyped arguments, bad
    targets, and whatever the recipe-level `checks` report. Imports targets but builds nothing."""
    policy = node_policy(cfg, policy)
    errors: list[str] = []
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
) -> None:
    target = default_target
    if TARGET_KEY in node:
        try:
            target = resolve_target(node[TARGET_KEY], policy=policy, key=child_path(path, TARGET_KEY))
        except ConfigError as exc:
            errors.append(str(exc))
            target = None
    keys = [k for k in node if k != TARGET_KEY and k not in ignore]
    signature = _signature(target) if target is not None else None
    if target is not None and signature is not None:
        before = len(errors)
        _bind_keys(node, keys, target, signature, provided | ignore, path, errors)
        if len(errors) == before:
            _check_dataclass_values(node, keys, target, provided, errors)
    for key in node:
        if key != TARGET_KEY:
            _scan(node[key], child_path(path, key), key, policy, errors)


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
    target: Callable[..., Any],
    signature: inspect.Signature,
    provided: frozenset[str],
    path: str,
    errors: list[str],
) -> None:
    accepted = accepted_names(signature)
    hints = _type_hints(target, signature)
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
        annotation = hints.get(key, param.annotation)
        problem = _type_problem(value, annotation, param.default)
        if problem:
            errors.append(f"{child_path(path, key)}: {problem}")
    for param in params.values():
        if (
            param.kind in _KEYWORD_KINDS
            and param.default is inspect.Parameter.empty
            and param.name != "self"
            and param.name not in node
            and param.name not in provided
        ):
            errors.append(
                f"{child_path(path, param.name)}: missing required argument of {target_name(target)}; "
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
            _check_section(value, None, frozenset(), frozenset(), path, policy, errors)
            return
        for k, v in value.items():
            _scan(v, child_path(path, k), k if isinstance(k, str) else None, policy, errors)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _scan(item, child_path(path, i), None, policy, errors)
    elif key is not None and key.endswith("_fn") and isinstance(value, str):
        try:
            resolve_target(value, policy=policy, key=path)
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


def _type_problem(value: Any, annotation: Any, default: Any) -> str | None:
    if annotation is inspect.Parameter.empty or annotation is Any:
        return None
    if value is None and default is None:
        return None  # `x: int = None` is common in libraries; None is clearly meant to be accepted
    if _matches(value, annotation) is not False:
        return None
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return f"{value!r} is not one of {', '.join(repr(c) for c in choices)}{hint}"
    problem = f"expected {_describe(annotation)}, got {type(value).__name__} {value!r}"
    if isinstance(value, str) and _matches(parse_literal(value), annotation) is True:
        problem += " (quoted in the YAML? remove the quotes)"
    return problem
