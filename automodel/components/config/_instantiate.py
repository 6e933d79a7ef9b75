"""Building objects from config sections: `_target_` plus keyword arguments plus runtime objects."""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any

from automodel.components.config._allowlist import CODE_LOADING_KEYS, loads_from_a_repository
from automodel.components.config._errors import ConfigError
from automodel.components.config._node import ConfigNode, child_path
from automodel.components.config._targets import TRUST_REMOTE_CODE_ENV, TargetPolicy, resolve_target

logger = logging.getLogger(__name__)

TARGET_KEY = "_target_"


def node_policy(node: Any, policy: TargetPolicy | None) -> TargetPolicy:
    """The explicit policy, else the one the config was loaded with, else the default."""
    if policy is not None:
        return policy
    found = node._policy if isinstance(node, ConfigNode) else None
    return found or TargetPolicy()


def code_loading_problem(key: Any, value: Any, path: str, policy: TargetPolicy) -> str | None:
    """Why `key: value` may not appear in a config (it would make a loader run code or unpickle), or None."""
    if not isinstance(key, str) or key not in CODE_LOADING_KEYS:
        return None
    rule = CODE_LOADING_KEYS[key]
    if not rule.risky(value):
        return None
    if rule.user_can_allow:
        if policy.remote_code_trusted():
            return None
        return (
            f"{path}: {value!r} {rule.why}; a config cannot turn that on by itself: if you trust that code, pass "
            f"--trust-remote-code (or set {TRUST_REMOTE_CODE_ENV}=1)"
        )
    return f"{path}: {value!r} is refused: {rule.why}; remove the key (safetensors and weights_only loading cover every model)"


def section_name(node: Any, path: str = "") -> str:
    return path or (node.path if isinstance(node, ConfigNode) else "") or "<config>"


def instantiate(
    node: ConfigNode | Mapping[str, Any] | None,
    *args: Any,
    default_target: Callable[..., Any] | None = None,
    policy: TargetPolicy | None = None,
    **runtime: Any,
) -> Any:
    """Call the section's `_target_` (else `default_target`) with its keys, built recursively, plus `runtime`.

    Nested mappings with `_target_` are built first; other nested mappings become dicts; `*_fn` keys holding a
    dotted string become the callable, and holding a section a `functools.partial` of it (called per batch). Runtime kwargs win over config keys. Exceptions raised by the target
    itself are not wrapped.
    """
    return _instantiate(node, args, default_target, node_policy(node, policy), runtime, "")


def _instantiate(
    node: Mapping[str, Any] | None,
    args: tuple[Any, ...],
    default_target: Callable[..., Any] | None,
    policy: TargetPolicy,
    runtime: dict[str, Any],
    path: str,
) -> Any:
    where = section_name(node, path)
    if node is None:
        if default_target is None:
            raise ConfigError(f"{where}: the section is missing and has no default; add it to the config")
        return _call(default_target, args, dict(runtime), where)
    if not isinstance(node, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keyword arguments, got {type(node).__name__} {node!r}")
    if TARGET_KEY in node:
        target = resolve_target(node[TARGET_KEY], policy=policy, key=child_path(where, TARGET_KEY))
    elif default_target is not None:
        target = default_target
    else:
        raise ConfigError(
            f"{where}: no '{TARGET_KEY}' to build it with; add e.g. `{TARGET_KEY}: torch.optim.AdamW` to the section"
        )
    kwargs = {
        key: _build(key, value, policy, child_path(where, key)) for key, value in node.items() if key != TARGET_KEY
    }
    named = node.get(TARGET_KEY)
    if isinstance(named, str) and loads_from_a_repository(_reference_mapped(named)):
        kwargs.setdefault("trust_remote_code", False)
    for key, value in runtime.items():
        if key in kwargs:
            logger.debug("%s: runtime argument '%s' replaces the config value %r", where, key, kwargs[key])
        kwargs[key] = value
    return _call(target, args, kwargs, where)


def _reference_mapped(dotted: str) -> str:
    text = dotted.strip()
    return "automodel" + text[len("nemo_automodel") :] if text.startswith("nemo_automodel.") else text


def _build(key: Any, value: Any, policy: TargetPolicy, path: str) -> Any:
    problem = code_loading_problem(key, value, path, policy)
    if problem:
        raise ConfigError(problem)
    if isinstance(value, Mapping):
        if TARGET_KEY in value and isinstance(key, str) and key.endswith("_fn"):
            return _partial(value, policy, path)
        if TARGET_KEY in value:
            return _instantiate(value, (), None, policy, {}, path)
        return {k: _build(k, v, policy, child_path(path, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_build(None, v, policy, child_path(path, i)) for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(key, str) and key.endswith("_fn") and isinstance(value, str):
        return resolve_target(value, policy=policy, key=path)
    return value


def build_callable(value: Any, *, policy: TargetPolicy | None = None, key: str = "") -> Callable[..., Any]:
    """What a `*_fn:` key holds, as a callable: a dotted name, or a section whose keys are bound (a partial)."""
    if isinstance(value, Mapping) and TARGET_KEY in value:
        return _partial(value, node_policy(value, policy), key)
    return resolve_target(value, policy=node_policy(value, policy), key=key)


def _partial(node: Mapping[str, Any], policy: TargetPolicy, path: str) -> functools.partial[Any]:
    """A `*_fn:` key holding a section (`collate_fn: {_target_: ..., pad_seq_len_divisible: 64}`): the callable with
    the section's keys bound, called later with the per-call arguments (a batch), as the reference system does."""
    target = resolve_target(node[TARGET_KEY], policy=policy, key=child_path(path, TARGET_KEY))
    kwargs = {
        key: _build(key, value, policy, child_path(path, key)) for key, value in node.items() if key != TARGET_KEY
    }
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None
    if signature is not None:
        try:
            signature.bind_partial(**kwargs)
        except TypeError as exc:
            raise ConfigError(_bind_error(exc, target, signature, kwargs, path)) from None
    return functools.partial(target, **kwargs)


def _call(target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], where: str) -> Any:
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        signature = None  # some builtins have no readable signature: let the call itself speak
    if signature is not None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise ConfigError(_bind_error(exc, target, signature, kwargs, where)) from None
    return target(*args, **kwargs)


def _bind_error(
    exc: TypeError, target: Callable[..., Any], signature: inspect.Signature, kwargs: dict[str, Any], where: str
) -> str:
    accepted = accepted_names(signature)
    unknown = [k for k in kwargs if k not in accepted] if not has_var_keyword(signature) else []
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, accepted, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    detail = f"unknown key(s) {', '.join(hints)}" if hints else str(exc)
    return (
        f"{where}: cannot call {target_name(target)} with this section: {detail}; "
        f"accepted: {', '.join(accepted) or '(no keyword arguments)'}"
    )


def accepted_names(signature: inspect.Signature) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in signature.parameters.values() if p.kind in kinds and p.name != "self"]


def has_var_keyword(signature: inspect.Signature) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def target_name(target: Any) -> str:
    module = getattr(target, "__module__", None)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    return f"{module}.{name}" if module else str(name)
