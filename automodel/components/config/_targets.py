"""Resolving `_target_` strings to callables, behind an allowlist of import roots."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from automodel.components.config._errors import ConfigError

ALLOWED_TARGETS_ENV = "AUTOMODEL_ALLOWED_TARGETS"
ALLOW_FILE_TARGETS_ENV = "AUTOMODEL_ALLOW_FILE_TARGETS"

# Import roots a config may name without an opt-in: our code and the libraries a fine-tuning config is made of.
DEFAULT_ALLOWED_PREFIXES: tuple[str, ...] = (
    "automodel",
    "nemo_automodel",
    "torch",
    "torchdata",
    "transformers",
    "datasets",
    "peft",
    "math",
)
# Entry points inside allowed roots that load or run arbitrary code (pickles, C++ sources, hub repos, shell commands,
# code strings, launchers). Explicit extra prefixes do not lift this; a user who needs one wraps it in their own
# module and allows that.
DEFAULT_DENIED_PREFIXES: tuple[str, ...] = (
    "torch.hub",
    "torch.load",
    "torch.serialization",
    "torch.package",
    "torch.jit.load",
    "torch.utils.cpp_extension",
    "torch.utils.collect_env",
    "torch.utils.benchmark",
    "torch.cuda.jiterator",
    "torch.ops",
    "torch.library",
    "torch.multiprocessing",
    "torch.distributed.run",
    "torch.distributed.launch",
    "torch.distributed.launcher",
    "torch.distributed.elastic",
    "torch.distributed.rpc",
    "transformers.dynamic_module_utils",
)
# Our own component packages whose names start with an underscore (they mirror the reference system's layout).
_PRIVATE_COMPONENTS = {"_peft", "_transformers"}
_TRUE_WORDS = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class TargetPolicy:
    """Which dotted paths a config may name. The env vars are read at each resolution, on top of the fields."""

    allowed_prefixes: tuple[str, ...] = DEFAULT_ALLOWED_PREFIXES
    extra_prefixes: tuple[str, ...] = ()
    allow_file_targets: bool = False
    denied_prefixes: tuple[str, ...] = field(default=DEFAULT_DENIED_PREFIXES)

    def __post_init__(self) -> None:
        for name in ("allowed_prefixes", "extra_prefixes", "denied_prefixes"):
            value = getattr(self, name)
            prefixes = (value,) if isinstance(value, str) else tuple(value)
            for prefix in prefixes:
                _check_prefix(prefix, f"TargetPolicy.{name}")
            object.__setattr__(self, name, prefixes)

    def effective_prefixes(self) -> tuple[str, ...]:
        """Allowed prefixes, plus extras from the fields and from AUTOMODEL_ALLOWED_TARGETS."""
        from_env = tuple(p.strip() for p in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if p.strip())
        for prefix in from_env:
            _check_prefix(prefix, ALLOWED_TARGETS_ENV)
        return self.allowed_prefixes + self.extra_prefixes + from_env

    def file_targets_allowed(self) -> bool:
        return self.allow_file_targets or os.environ.get(ALLOW_FILE_TARGETS_ENV, "").strip().lower() in _TRUE_WORDS

    def is_allowed(self, dotted: str) -> bool:
        """Whole-segment prefix match (`torch` allows `torch.optim.AdamW`, not `torchx.X`); denials win."""
        path = _normalise(dotted)
        allowed = any(_under(path, _normalise(p)) for p in self.effective_prefixes())
        return allowed and not self.is_denied(dotted)

    def is_denied(self, dotted: str) -> bool:
        path = _normalise(dotted)
        return any(_under(path, _normalise(p)) for p in self.denied_prefixes)


def _check_prefix(prefix: Any, source: str) -> None:
    if not isinstance(prefix, str) or not prefix or not all(part.isidentifier() for part in prefix.split(".")):
        raise ConfigError(f"{source}: {prefix!r} is not a dotted module path; expected e.g. 'mypkg' or 'mypkg.models'")


def _normalise(dotted: str) -> list[str]:
    parts = dotted.split(".")
    return ["automodel", *parts[1:]] if parts[0] == "nemo_automodel" else parts


def _under(path: list[str], prefix: list[str]) -> bool:
    return path[: len(prefix)] == prefix


def _where(key: str) -> str:
    return f"{key}: " if key else ""


def resolve_target(dotted: Any, *, policy: TargetPolicy | None = None, key: str = "") -> Callable[..., Any]:
    """Resolve `pkg.mod.Name`, `pkg.mod.Name.method` or (opt-in) `path/file.py:Name` to a callable.

    `nemo_automodel.X` resolves to `automodel.X`. `key` is the dotted config key, for error messages.
    """
    if callable(dotted):
        return dotted  # already an object: set by code, not read from a file
    if not isinstance(dotted, str) or not dotted.strip():
        raise ConfigError(f"{_where(key)}expected a dotted import path like 'torch.optim.AdamW', got {dotted!r}")
    policy = policy or TargetPolicy()
    text = dotted.strip()
    if ":" in text:
        return _resolve_file_target(text, policy, key)
    parts = text.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{_where(key)}{text!r} is not a dotted import path; expected e.g. 'torch.optim.AdamW'")
    mapped = _normalise(text)
    _check_private(mapped, text, key)
    mapped_text = ".".join(mapped)
    _check_policy(mapped_text, text, policy, key)

    obj, module_len = _import_longest_prefix(mapped, text, key)
    for i in range(module_len, len(mapped)):
        owner, name = obj, mapped[i]
        if not hasattr(owner, name):
            raise ConfigError(_missing_attribute(text, mapped, i, owner, key))
        obj = getattr(owner, name)
        # `torch.os.system` walks through a module imported by an allowed one: check every module on the way.
        if isinstance(obj, ModuleType):
            _check_policy(obj.__name__, text, policy, key, via=True)

    # A re-export (`allowedpkg.mod.Popen`) is judged by where the object really lives.
    home = getattr(obj, "__module__", None)
    if isinstance(home, str) and home and not isinstance(obj, ModuleType):
        _check_policy(home, text, policy, key, via=True)
    if not callable(obj):
        raise ConfigError(f"{_where(key)}{text!r} resolves to a {type(obj).__name__}, which is not callable")
    return obj


def _check_private(parts: list[str], text: str, key: str) -> None:
    for i, part in enumerate(parts):
        component_pkg = i == 2 and parts[:2] == ["automodel", "components"] and part in _PRIVATE_COMPONENTS
        last = i == len(parts) - 1
        if part.startswith("__") or (part.startswith("_") and (last or not component_pkg)):
            raise ConfigError(
                f"{_where(key)}{text!r} names the private name '{part}'; a config may only name public callables"
            )


def _check_policy(path: str, text: str, policy: TargetPolicy, key: str, via: bool = False) -> None:
    if policy.is_allowed(path):
        return
    shown = f"{text!r} (which resolves into '{path}')" if via else repr(text)
    if policy.is_denied(path):
        raise ConfigError(
            f"{_where(key)}{shown} is refused: it can load or run arbitrary code; wrap what you need in your own "
            f"module and allow that module instead"
        )
    root = _normalise(path)[0]
    allowed = ", ".join(policy.effective_prefixes())
    raise ConfigError(
        f"{_where(key)}{shown} is not in the allowlist of import prefixes ({allowed}); if you trust it, "
        f"pass --allow-target {root} or set {ALLOWED_TARGETS_ENV}={root}"
    )


def _import_longest_prefix(parts: list[str], text: str, key: str) -> tuple[Any, int]:
    reference = text.startswith("nemo_automodel.")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        try:
            return importlib.import_module(name), n
        except ModuleNotFoundError as exc:
            # Only "this very module does not exist" means: try a shorter prefix. A missing dependency *inside*
            # an existing module is a real problem to report.
            if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise ConfigError(
                f"{_where(key)}importing '{name}' for {text!r} failed: {exc}; install the missing package"
            ) from exc
        except ImportError as exc:
            raise ConfigError(f"{_where(key)}importing '{name}' for {text!r} failed: {exc}") from exc
    if reference:
        raise ConfigError(
            f"{_where(key)}{text!r} is a reference-system (NeMo Automodel) name with no counterpart here yet "
            f"(looked for '{'.'.join(parts)}'); use the automodel equivalent or a transformers/torch callable"
        )
    raise ConfigError(f"{_where(key)}module '{parts[0]}' not found for {text!r}; is the package installed?")


def _missing_attribute(text: str, parts: list[str], i: int, owner: Any, key: str) -> str:
    owner_name = ".".join(parts[:i])
    if text.startswith("nemo_automodel."):
        return (
            f"{_where(key)}{text!r} is a reference-system (NeMo Automodel) name with no counterpart here yet "
            f"('{owner_name}' has no attribute '{parts[i]}')"
        )
    public = [n for n in dir(owner) if not n.startswith("_")]
    close = difflib.get_close_matches(parts[i], public, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{_where(key)}'{owner_name}' has no attribute '{parts[i]}' (target {text!r}){hint}"


def _resolve_file_target(text: str, policy: TargetPolicy, key: str) -> Callable[..., Any]:
    file_part, _, symbol = text.rpartition(":")
    if not policy.file_targets_allowed():
        raise ConfigError(
            f"{_where(key)}file target {text!r} is disabled: a config may not run code from a file by default; "
            f"if you trust '{file_part}', set {ALLOW_FILE_TARGETS_ENV}=1 (or TargetPolicy(allow_file_targets=True))"
        )
    parts = symbol.split(".")
    if not file_part.endswith(".py") or not symbol or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"{_where(key)}{text!r} is not a file target; expected 'path/to/file.py:name'")
    if any(p.startswith("_") for p in parts):
        raise ConfigError(f"{_where(key)}{text!r} names a private name; a config may only name public callables")
    path = Path(file_part).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{_where(key)}file {file_part!r} of target {text!r} not found (cwd: {Path.cwd()})")
    obj: Any = _load_file_module(path)
    for i, name in enumerate(parts):
        if not hasattr(obj, name):
            owner = file_part if i == 0 else f"{file_part}:{'.'.join(parts[:i])}"
            raise ConfigError(f"{_where(key)}'{owner}' has no attribute '{name}'")
        obj = getattr(obj, name)
    if not callable(obj):
        raise ConfigError(f"{_where(key)}{text!r} resolves to a {type(obj).__name__}, which is not callable")
    return obj  # type: ignore[no-any-return]


def _load_file_module(path: Path) -> ModuleType:
    # One module per file path, registered in sys.modules so dataclasses/pickle inside it work, and a second
    # resolution does not execute the file again.
    name = "automodel_file_target_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
