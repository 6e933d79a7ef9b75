"""Resolving `_target_` strings to callables: the reviewed allowlist (`_allowlist.py`), else the user's opt-in.

A config names only the callables listed in `_allowlist.py`, exactly. Everything else (another function of an allowed
library, the user's own package, a `path/to/file.py:fn` file target) resolves only when the *user* opted in with
`--allow-target NAME` / `AUTOMODEL_ALLOWED_TARGETS=NAME` (file targets: `AUTOMODEL_ALLOW_FILE_TARGETS=1`); a YAML file
cannot opt itself in. Private names never resolve. Before an opt-in module is imported, every segment is checked,
and the denylist below wins even over an opt-in.
"""

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

from automodel.components.config._allowlist import ALLOWED_TARGETS, canonical_name
from automodel.components.config._errors import ConfigError

ALLOWED_TARGETS_ENV = "AUTOMODEL_ALLOWED_TARGETS"
ALLOW_FILE_TARGETS_ENV = "AUTOMODEL_ALLOW_FILE_TARGETS"
TRUST_REMOTE_CODE_ENV = "AUTOMODEL_TRUST_REMOTE_CODE"

# Defence in depth for opt-ins: entry points that load or run arbitrary code (pickles, C++ sources, hub repos, dynamic
# imports, shell commands, launchers). `--allow-target torch` still does not reach these; a user who needs one wraps it
# in their own module and allows that.
DEFAULT_DENIED_PREFIXES: tuple[str, ...] = (
    "builtins",
    "importlib",
    "pickle",
    "subprocess",
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
    "torch.distributed.checkpoint.format_utils",
    "transformers.dynamic_module_utils",
    "transformers.utils.import_utils",
    "transformers.modeling_utils.load_state_dict",
    "peft.utils.save_and_load.torch_load",
)
# Our own component packages whose names start with an underscore (they mirror the reference system's layout).
_PRIVATE_COMPONENTS = {"_peft", "_transformers"}
_TRUE_WORDS = {"1", "true", "yes", "on"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE_WORDS


@dataclass(frozen=True)
class TargetPolicy:
    """What the *user* (never the config) allows beyond the allowlist. Env vars are read at each resolution.

    `extra_prefixes`: opt-ins, each an exact dotted name (`mypkg.build_model`) or a module prefix (`mypkg`), matched
    by whole segments. `trust_remote_code`: a config may then set `trust_remote_code: true`.
    """

    extra_prefixes: tuple[str, ...] = ()
    allow_file_targets: bool = False
    trust_remote_code: bool = False
    denied_prefixes: tuple[str, ...] = field(default=DEFAULT_DENIED_PREFIXES)

    def __post_init__(self) -> None:
        for name in ("extra_prefixes", "denied_prefixes"):
            value = getattr(self, name)
            prefixes = (value,) if isinstance(value, str) else tuple(value)
            for prefix in prefixes:
                _check_prefix(prefix, f"TargetPolicy.{name}")
            object.__setattr__(self, name, prefixes)

    def opt_ins(self) -> tuple[str, ...]:
        """The user's opt-ins: the field, plus AUTOMODEL_ALLOWED_TARGETS."""
        from_env = tuple(p.strip() for p in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if p.strip())
        for prefix in from_env:
            _check_prefix(prefix, ALLOWED_TARGETS_ENV)
        return self.extra_prefixes + from_env

    def file_targets_allowed(self) -> bool:
        return self.allow_file_targets or _env_flag(ALLOW_FILE_TARGETS_ENV)

    def remote_code_trusted(self) -> bool:
        return self.trust_remote_code or _env_flag(TRUST_REMOTE_CODE_ENV)

    def is_listed(self, dotted: str) -> bool:
        return canonical_name(".".join(_normalise(dotted))) in ALLOWED_TARGETS

    def is_opted_in(self, dotted: str) -> bool:
        path = _normalise(dotted)
        return any(_under(path, _normalise(p)) for p in self.opt_ins()) and not self.is_denied(dotted)

    def is_allowed(self, dotted: str) -> bool:
        """Listed in the allowlist (exactly), or under one of the user's opt-ins and not denied."""
        return self.is_listed(dotted) or self.is_opted_in(dotted)

    def is_denied(self, dotted: str) -> bool:
        path = _normalise(dotted)
        return any(_under(path, _normalise(p)) for p in self.denied_prefixes)


def _check_prefix(prefix: Any, source: str) -> None:
    if not isinstance(prefix, str) or not prefix or not all(part.isidentifier() for part in prefix.split(".")):
        raise ConfigError(f"{source}: {prefix!r} is not a dotted name; expected e.g. 'mypkg' or 'mypkg.build_model'")


def _normalise(dotted: str) -> list[str]:
    parts = dotted.strip().split(".")
    return ["automodel", *parts[1:]] if parts[0] == "nemo_automodel" else parts


def _under(path: list[str], prefix: list[str]) -> bool:
    return path[: len(prefix)] == prefix


def _where(key: str) -> str:
    return f"{key}: " if key else ""


@dataclass(frozen=True)
class ParsedTarget:
    """A checked `_target_` string: `dotted` (nemo_automodel mapped, aliases applied) or a file target."""

    text: str
    dotted: str = ""
    listed: bool = False
    file_path: str = ""
    symbol: str = ""

    @property
    def is_file(self) -> bool:
        return bool(self.file_path)


def parse_target(dotted: Any, *, policy: TargetPolicy | None = None, key: str = "") -> ParsedTarget:
    """Check a `_target_` string against the policy without importing anything; raise ConfigError if refused."""
    if not isinstance(dotted, str) or not dotted.strip():
        raise ConfigError(f"{_where(key)}expected a dotted import path like 'torch.optim.AdamW', got {dotted!r}")
    policy = policy or TargetPolicy()
    text = dotted.strip()
    if ":" in text:
        return _parse_file_target(text, policy, key)
    parts = text.split(".")
    if not all(part.isidentifier() for part in parts):
        raise ConfigError(f"{_where(key)}{text!r} is not a dotted import path; expected e.g. 'torch.optim.AdamW'")
    mapped = _normalise(text)
    name = canonical_name(".".join(mapped))
    if name in ALLOWED_TARGETS:  # reviewed exact names (some reference paths run through private modules)
        return ParsedTarget(text, name, listed=True)
    _check_private(mapped, text, key)
    if policy.is_denied(name):
        raise ConfigError(
            f"{_where(key)}{text!r} is refused: it can load or run arbitrary code; wrap what you need in your own "
            f"module and allow that module instead"
        )
    if policy.is_opted_in(name):
        return ParsedTarget(text, name)
    raise ConfigError(_not_allowed_message(text, name, key))


def resolve_target(dotted: Any, *, policy: TargetPolicy | None = None, key: str = "") -> Callable[..., Any]:
    """Resolve `pkg.mod.Name`, `pkg.mod.Name.method` or (opt-in) `path/file.py:Name` to a callable.

    `nemo_automodel.X` resolves to `automodel.X`. `key` is the dotted config key, for error messages.
    """
    if callable(dotted):
        return dotted  # already an object: set by code, not read from a file
    policy = policy or TargetPolicy()
    target = parse_target(dotted, policy=policy, key=key)
    if target.is_file:
        return _load_file_target(target, key)
    parts = target.dotted.split(".")
    obj, module_len = _import_longest_prefix(parts, target.text, key)
    for i in range(module_len, len(parts)):
        owner, name = obj, parts[i]
        if not hasattr(owner, name):
            raise ConfigError(_missing_attribute(target.text, parts, i, owner, key))
        obj = getattr(owner, name)
        # `mypkg.os.system` walks through a module that an opted-in one imported: check every module on the way.
        if isinstance(obj, ModuleType) and not target.listed:
            _check_opt_in(obj.__name__, target.text, policy, key)
    # A re-export (`mypkg.Popen`) is judged by where the object really lives.
    home = getattr(obj, "__module__", None)
    walked_from = ".".join(parts[:module_len])  # an object defined in the module we imported is no re-export
    if not target.listed and isinstance(home, str) and home and home != walked_from and not isinstance(obj, ModuleType):
        _check_opt_in(home, target.text, policy, key)
    if not callable(obj):
        raise ConfigError(f"{_where(key)}{target.text!r} resolves to a {type(obj).__name__}, which is not callable")
    return obj


def _check_private(parts: list[str], text: str, key: str) -> None:
    for i, part in enumerate(parts):
        component_pkg = i == 2 and parts[:2] == ["automodel", "components"] and part in _PRIVATE_COMPONENTS
        last = i == len(parts) - 1
        if part.startswith("__") or (part.startswith("_") and (last or not component_pkg)):
            raise ConfigError(
                f"{_where(key)}{text!r} names the private name '{part}'; a config may only name public callables"
            )


def _check_opt_in(path: str, text: str, policy: TargetPolicy, key: str) -> None:
    if policy.is_opted_in(path) or policy.is_listed(path):
        return
    if policy.is_denied(path):
        raise ConfigError(
            f"{_where(key)}{text!r} (which resolves into '{path}') is refused: it can load or run arbitrary code"
        )
    raise ConfigError(
        f"{_where(key)}{text!r} resolves into '{path}', which you did not allow; if you trust it, pass "
        f"--allow-target {path} or set {ALLOWED_TARGETS_ENV}={path}"
    )


def _not_allowed_message(text: str, name: str, key: str) -> str:
    close = _close_listed(name)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    if text.startswith("nemo_automodel.") and not _exists_in_automodel(name):
        return (
            f"{_where(key)}{text!r} is a reference-system (NeMo Automodel) name with no counterpart here yet "
            f"(looked for '{name}'){hint}"
        )
    if name.startswith("automodel.") and not _exists_in_automodel(name):
        return f"{_where(key)}{text!r} does not exist in automodel{hint}"
    return (
        f"{_where(key)}{text!r} is not in the allowlist of callables a config may name (see docs/security.md){hint}; "
        f"if you trust it, pass --allow-target {name} or set {ALLOWED_TARGETS_ENV}={name}"
    )


def _close_listed(name: str) -> list[str]:
    """Listed names close to `name`: siblings with a similar last segment first, then similar full names."""
    owner, _, last = name.rpartition(".")
    siblings = {n.rpartition(".")[2]: n for n in ALLOWED_TARGETS if n.rpartition(".")[0] == owner}
    close = [siblings[c] for c in difflib.get_close_matches(last, list(siblings), n=3, cutoff=0.6)]
    return close or difflib.get_close_matches(name, list(ALLOWED_TARGETS), n=3, cutoff=0.75)


def _exists_in_automodel(name: str) -> bool:
    """Whether `automodel.X...` names something (our own code: importing it runs nothing a config controls)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for part in parts[n:]:
            if not hasattr(obj, part):
                return False
            obj = getattr(obj, part)
        return True
    return False


def _import_longest_prefix(parts: list[str], text: str, key: str) -> tuple[Any, int]:
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
    raise ConfigError(f"{_where(key)}module '{parts[0]}' not found for {text!r}; is the package installed?")


def _missing_attribute(text: str, parts: list[str], i: int, owner: Any, key: str) -> str:
    owner_name = ".".join(parts[:i])
    public = [n for n in dir(owner) if not n.startswith("_")]
    close = difflib.get_close_matches(parts[i], public, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"{_where(key)}'{owner_name}' has no attribute '{parts[i]}' (target {text!r}){hint}"


# --- file targets (`path/to/file.py:name`, opt-in only) -------------------------------------------------------------
def _parse_file_target(text: str, policy: TargetPolicy, key: str) -> ParsedTarget:
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
    return ParsedTarget(text, file_path=str(path), symbol=symbol)


def _load_file_target(target: ParsedTarget, key: str) -> Callable[..., Any]:
    obj: Any = _load_file_module(Path(target.file_path))
    parts = target.symbol.split(".")
    for i, name in enumerate(parts):
        if not hasattr(obj, name):
            owner = target.file_path if i == 0 else f"{target.file_path}:{'.'.join(parts[:i])}"
            raise ConfigError(f"{_where(key)}'{owner}' has no attribute '{name}'")
        obj = getattr(obj, name)
    if not callable(obj):
        raise ConfigError(f"{_where(key)}{target.text!r} resolves to a {type(obj).__name__}, which is not callable")
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
