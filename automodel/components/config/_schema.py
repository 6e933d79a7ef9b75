"""`Section`: how a recipe builds one config section. One entry drives both `validate_config` and `build_section`."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from automodel.components.config._errors import ConfigError
from automodel.components.config._instantiate import instantiate
from automodel.components.config._node import child_path


@dataclass(frozen=True)
class Section:
    """How a recipe builds one top-level section: what `validate_config` checks and what `build` calls, from the
    same entry, so the two cannot drift.

    - `default_target` builds the section when it has no `_target_` (e.g. a config dataclass).
    - `provided`: keyword arguments the recipe supplies at build time (tokenizer, params, dataset...). A YAML key of
      the same name would be silently replaced, so it is refused (in validation and at build), except:
    - `overridable`: provided keys the config may set itself; the recipe then does not supply them (a dataset's
      own `tokenizer:` section, as in the reference system);
    - `mirrors`: provided key -> the config key whose value the recipe supplies for it; the YAML may repeat that
      value (`dataloader.batch_size` equal to `step_scheduler.local_batch_size`).
    - `ignore`: keys the recipe consumes itself (not passed to the target).
    """

    default_target: Callable[..., Any] | None = None
    provided: frozenset[str] = frozenset()
    required: bool = False
    ignore: frozenset[str] = frozenset()
    overridable: frozenset[str] = frozenset()
    mirrors: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept any collection (or one name) for convenience; store frozensets.
        for name in ("provided", "ignore", "overridable"):
            value = getattr(self, name)
            object.__setattr__(self, name, frozenset([value] if isinstance(value, str) else value))
        object.__setattr__(self, "mirrors", types.MappingProxyType(dict(self.mirrors)))
        stray = (self.overridable | set(self.mirrors)) - self.provided
        assert not stray, f"Section: {sorted(stray)} must also be in `provided`"

    def shadowing_problems(self, node: Mapping[str, Any], path: str, root: Mapping[str, Any]) -> list[str]:
        """YAML keys of `node` that the recipe's supplied arguments would replace."""
        problems = []
        for key in sorted(self.provided - self.overridable):
            if key not in node:
                continue
            source = self.mirrors.get(key)
            if source is not None and _lookup(root, source) == node[key]:
                continue  # the same value the recipe passes: nothing is lost
            where = f" from {source} ({_lookup(root, source)!r})" if source is not None else ""
            problems.append(
                f"{child_path(path, key)}: the recipe supplies '{key}' itself{where}, so this value would be "
                f"ignored; remove it from the config" + (f" or set {source} instead" if source is not None else "")
            )
        return problems


def _lookup(root: Mapping[str, Any], dotted: str) -> Any:
    value: Any = root
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def build_section(cfg: Mapping[str, Any], name: str, section: Section, **supplied: Any) -> Any:
    """Build section `name` of `cfg` as `section` says: its `_target_` or the default target, with the YAML keys and
    the arguments the recipe supplies. Supplying an argument the section does not declare is a bug (the validator
    would not know about it); a YAML key that a supplied argument would replace is a ConfigError, as in validation
    (torchtitan's `build()` rule); an `overridable` key the YAML sets is not supplied."""
    undeclared = set(supplied) - section.provided
    if undeclared:
        raise TypeError(f"{name}: the recipe supplies {sorted(undeclared)}, which its Section does not declare")
    node = cfg.get(name)
    if isinstance(node, Mapping):
        problems = section.shadowing_problems(node, name, cfg)
        if problems:
            raise ConfigError(problems[0])
        supplied = {key: value for key, value in supplied.items() if key not in section.overridable or key not in node}
    return instantiate(node, default_target=section.default_target, **supplied)
