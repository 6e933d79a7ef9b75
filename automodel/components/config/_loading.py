"""Reading configs: YAML files and text, CLI overrides, and the `-c CONFIG` command line of a recipe file."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from automodel.components.config._errors import ConfigError
from automodel.components.config._node import ConfigNode
from automodel.components.config._scalars import Template, has_placeholder, parse_literal
from automodel.components.config._targets import TargetPolicy

logger = logging.getLogger(__name__)

_STR_TAG = "tag:yaml.org,2002:str"
# Bounds on what one config may expand to: real configs have a few hundred nodes. Aliases (`*anchor`) are expanded
# into copies, so ~300 bytes of nested anchors (a "billion laughs" alias bomb) would otherwise take minutes and
# gigabytes before anything could be validated.
MAX_CONFIG_NODES = 100_000
MAX_CONFIG_BYTES = 8 * 1024 * 1024


# --- YAML -------------------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that literal-parses plain (unquoted) string scalars and keeps `${VAR}` strings as templates."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        self.flatten_mapping(node)  # `<<: *anchor` merge keys
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            # Keys are taken as written: `1e-5:` stays the text "1e-5", not a float.
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _STR_TAG:
                key = self.construct_scalar(key_node)
            else:
                key = self.construct_object(key_node, deep=deep)
            if key in mapping:
                # PyYAML silently keeps the last duplicate; a repeated key is almost always an editing mistake.
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r} (the same key appears twice in one mapping)",
                    key_node.start_mark,
                )
            mapping[key] = self.construct_object(value_node, deep=deep)
        return mapping


def _construct_str(loader: _Loader, node: yaml.ScalarNode) -> Any:
    text = loader.construct_scalar(node)
    plain = node.style is None
    if has_placeholder(text):
        return Template(text, plain)
    return parse_literal(text) if plain else text


_Loader.add_constructor(_STR_TAG, _construct_str)


def load_yaml_text(text: str, source: str = "<string>", *, policy: TargetPolicy | None = None) -> ConfigNode:
    """Parse YAML text into a ConfigNode (placeholders resolved); `source` names the text in errors."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: the config is {len(text) / 2**20:.1f} MiB, more than a config can be "
            f"({MAX_CONFIG_BYTES // 2**20} MiB); put data in a dataset file and point the config at it"
        )
    try:
        loader = _Loader(text)  # a SafeLoader: no python/ tags
        try:
            root = loader.get_single_node()
            if root is not None:
                _check_expanded_size(root, source)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except RecursionError:
        raise ConfigError(f"{source}: the config is nested too deeply to be a config; flatten it") from None
    except yaml.YAMLError as exc:
        message = _yaml_error_message(exc, source)
        if "${" in text and "'{'" in message:
            message += "; inside [...] or {...}, quote placeholders: ['${VAR}']"
        raise ConfigError(message) from None
    if data is None:
        raise ConfigError(f"{source}: the config is empty; expected a mapping of sections (model:, dataset:, ...)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level of a config must be a mapping of sections, got a {type(data).__name__}"
        )
    try:
        node = ConfigNode(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    node._set_policy(policy)
    return node


def _check_expanded_size(root: yaml.Node, source: str) -> None:
    """Refuse a document whose aliases expand to more than MAX_CONFIG_NODES nodes, or that refers to itself.

    Counts on the composed node graph, where an alias is the same node object as its anchor: each node's expanded
    size is computed once, so a bomb is measured in microseconds instead of being expanded.
    """
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    active: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            active.discard(key)
            children = _children(node)
            total = 1 + sum(sizes[id(child)] for child in children)
            if total > MAX_CONFIG_NODES:
                line = node.start_mark.line + 1 if node.start_mark is not None else "?"
                raise ConfigError(
                    f"{source}:{line}: the config expands to more than {MAX_CONFIG_NODES:,} values (YAML aliases "
                    "copy what their anchor holds; nested aliases multiply); write the values out instead"
                )
            sizes[key] = total
            continue
        if key in sizes:
            continue
        if key in active:
            line = node.start_mark.line + 1 if node.start_mark is not None else "?"
            raise ConfigError(f"{source}:{line}: a YAML alias refers to the mapping or list that contains it")
        active.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) not in sizes:
                stack.append((child, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _yaml_error_message(exc: yaml.YAMLError, source: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: invalid YAML: {detail}"


def load_config(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), *, policy: TargetPolicy | None = None
) -> ConfigNode:
    """Load a YAML config file and apply CLI override tokens (`--a.b 1`, `--a.b=1`, `a.b=1`).

    `policy` is remembered on the config: `instantiate` and `validate_config` use it unless given another.
    """
    file = Path(path)
    if not file.is_file():
        reason = "is a directory" if file.is_dir() else "not found"
        raise ConfigError(f"config file '{path}' {reason} (cwd: {Path.cwd()}); pass the path of a YAML file")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file '{path}' cannot be read: {exc}") from None
    cfg = load_yaml_text(text, source=str(path), policy=policy)
    if overrides:
        apply_overrides(cfg, parse_overrides(list(overrides)))
    return cfg


# --- overrides --------------------------------------------------------------------------------------------------
def parse_overrides(argv: list[str]) -> list[tuple[str, Any]]:
    """Parse `--a.b value`, `--a.b=value` and `a.b=value` into (dotted key, literal-parsed value) pairs.

    Values parse like unquoted YAML scalars; quote for a string (`--x '"123"'`). `${VAR}` stays text here and is
    resolved by `apply_overrides`.
    """
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--"):
            key, eq, value = token[2:].partition("=")
            if not eq:
                if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                    raise ConfigError(
                        f"override '{token}' has no value; write '{token} VALUE' or '{token}=VALUE' "
                        f"(use '{token} true' for a boolean)"
                    )
                value = argv[i + 1]
                i += 1
        elif "=" in token and not token.startswith("-"):
            key, _, value = token.partition("=")
        else:
            raise ConfigError(
                f"unexpected argument {token!r}; overrides look like '--section.key value', "
                f"'--section.key=value' or 'section.key=value'"
            )
        _check_key(key, token)
        pairs.append((key, value if has_placeholder(value) else parse_literal(value)))
        i += 1
    return pairs


def _check_key(key: str, token: str) -> None:
    if not key or any(not part or part != part.strip() for part in key.split(".")):
        raise ConfigError(f"override {token!r} has an invalid key {key!r}; expected dotted names like 'optimizer.lr'")


def apply_overrides(cfg: ConfigNode, overrides: Iterable[tuple[str, Any]]) -> ConfigNode:
    """Set each dotted key (creating mappings on the way); string values may use `${VAR}`. Returns `cfg`."""
    for key, value in overrides:
        if isinstance(value, str) and has_placeholder(value):
            value = Template(value, plain=True)
        logger.debug("config override %s = %r", key, value)
        cfg.set(key, value)
    return cfg


def parse_cli_args(argv: list[str]) -> tuple[str, list[tuple[str, Any]]]:
    """`-c CONFIG [overrides...]` of a recipe file run directly -> (config path, parsed overrides)."""
    config: str | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        value: str | None = None
        if token in ("-c", "--config"):
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise ConfigError(f"'{token}' needs the path of a YAML config: {token} examples/llm/CONFIG.yaml")
            value = argv[i + 1]
            i += 1
        elif token.startswith(("-c=", "--config=")):
            value = token.partition("=")[2]
        else:
            rest.append(token)
        if value is not None:
            if config is not None:
                raise ConfigError(f"the config is given twice ('{config}' and '{value}'); pass one -c/--config")
            config = value
        i += 1
    if not config:
        raise ConfigError("missing the config: pass -c/--config path/to/config.yaml")
    return config, parse_overrides(rest)
