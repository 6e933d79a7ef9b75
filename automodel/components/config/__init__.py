"""Config component: YAML loading, `${VAR}` interpolation, CLI overrides, `_target_` resolution behind an
allowlist, instantiation and whole-config validation."""

from automodel.components.config._allowlist import ALLOWED_TARGETS, CODE_LOADING_KEYS, TARGET_ALIASES
from automodel.components.config._errors import ConfigError, ConfigValidationError
from automodel.components.config._instantiate import build_callable, instantiate, node_policy
from automodel.components.config._loading import (
    apply_overrides,
    load_config,
    load_yaml_text,
    parse_cli_args,
    parse_overrides,
)
from automodel.components.config._node import ConfigNode
from automodel.components.config._schema import Section, build_section
from automodel.components.config._targets import (
    ALLOW_FILE_TARGETS_ENV,
    ALLOWED_TARGETS_ENV,
    TRUST_REMOTE_CODE_ENV,
    TargetPolicy,
    parse_target,
    resolve_target,
)
from automodel.components.config._validate import validate_config

__all__ = [
    "ALLOWED_TARGETS",
    "ALLOWED_TARGETS_ENV",
    "ALLOW_FILE_TARGETS_ENV",
    "CODE_LOADING_KEYS",
    "TARGET_ALIASES",
    "TRUST_REMOTE_CODE_ENV",
    "ConfigError",
    "ConfigNode",
    "ConfigValidationError",
    "Section",
    "TargetPolicy",
    "apply_overrides",
    "build_callable",
    "build_section",
    "instantiate",
    "load_config",
    "load_yaml_text",
    "node_policy",
    "parse_cli_args",
    "parse_overrides",
    "parse_target",
    "resolve_target",
    "validate_config",
]
