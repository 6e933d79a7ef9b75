"""Config component: YAML loading, `${VAR}` interpolation, CLI overrides, `_target_` resolution behind an
allowlist, instantiation and whole-config validation."""

from automodel.components.config._errors import ConfigError, ConfigValidationError
from automodel.components.config._instantiate import instantiate
from automodel.components.config._loading import (
    apply_overrides,
    load_config,
    load_yaml_text,
    parse_cli_args,
    parse_overrides,
)
from automodel.components.config._node import ConfigNode
from automodel.components.config._targets import TargetPolicy, resolve_target
from automodel.components.config._validate import Section, validate_config

__all__ = [
    "ConfigError",
    "ConfigNode",
    "ConfigValidationError",
    "Section",
    "TargetPolicy",
    "apply_overrides",
    "instantiate",
    "load_config",
    "load_yaml_text",
    "parse_cli_args",
    "parse_overrides",
    "resolve_target",
    "validate_config",
]
