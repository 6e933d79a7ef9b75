"""Helpers shared by the SLURM and Kubernetes launchers: building a settings dataclass from a config section, value
checks that collect every problem, secret handling and finding the project checkout."""

from __future__ import annotations

import dataclasses
import difflib
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from automodel._shared.errors import UserError

T = TypeVar("T")

# Passed through from the submitting environment (SLURM) or a Secret (Kubernetes); never written into a file.
PASSTHROUGH_SECRETS = ("WANDB_API_KEY", "HF_TOKEN")
_SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|ACCESS_KEY|PRIVATE_KEY)$", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# The config component's placeholder syntax: `${VAR}` or `${VAR,default}` (the default runs to the first `}`).
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:,([^}]*))?\}")

# torchrun (torch >= 2.9) reads its options from PET_<OPTION> variables: also forward SIGUSR1 (SLURM's pre-emption
# warning) to the ranks instead of dying on it, and give the ranks time to save before it kills them.
TORCHRUN_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


class LaunchError(UserError):
    """A launch setting the user can fix (a `slurm:` / `k8s:` key, a missing tool, a refused submission)."""


def settings_from_mapping(cls: type[T], data: Mapping[str, Any] | None, section: str, **defaults: Any) -> T:
    """Build the dataclass `cls` from a config section; unknown keys are reported with the allowed ones."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    problems = []
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{section}.{key}: unknown key{hint}")
    if problems:
        raise LaunchError("; ".join(problems) + f". Allowed keys under {section}: {', '.join(names)}")
    return cls(**{**defaults, **data})


class Problems:
    """Collects every problem of a section, then raises them together."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{self.section}.{key}: {message}")

    def check_int(self, key: str, value: Any, *, minimum: int, optional: bool = False) -> None:
        if value is None and optional:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.add(key, f"expected an integer >= {minimum}, got {value!r}")

    def check_str(self, key: str, value: Any, *, optional: bool = True) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or not value:
            self.add(key, f"expected a non-empty string, got {value!r}")

    def check_list_of_str(self, key: str, value: Any) -> None:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            self.add(key, f"expected a list of strings, got {value!r}")

    def check_mapping(self, key: str, value: Any) -> bool:
        if not isinstance(value, Mapping):
            self.add(key, f"expected a mapping (NAME: value), got {value!r}")
            return False
        return True

    def check_env(self, key: str, env: Any, *, secrets_hint: str, allow_placeholders: bool = False) -> None:
        """Names must be valid variable names; a secret-looking name must not carry a literal value (a `${VAR}`
        placeholder is fine where `allow_placeholders`: it is expanded when the job runs, never written resolved)."""
        if not self.check_mapping(key, env):
            return
        for name, value in env.items():
            if not isinstance(name, str) or not _ENV_NAME.match(name):
                self.add(f"{key}.{name}", "not a valid environment variable name (letters, digits, _)")
            elif looks_secret(name) and not (
                allow_placeholders and isinstance(value, str) and PLACEHOLDER.fullmatch(value.strip())
            ):
                self.add(f"{key}.{name}", f"looks like a secret and would be written into a file; {secrets_hint}")

    def raise_if_any(self) -> None:
        if self.items:
            raise LaunchError("; ".join(self.items))


def looks_secret(name: str) -> bool:
    return name in PASSTHROUGH_SECRETS or bool(_SECRET_NAME.search(name))


def env_text(value: Any) -> str:
    """An environment value as text (YAML booleans as `true` / `false`, the way they were written)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def find_checkout(cwd: Path) -> Path | None:
    """The root of the git checkout of this project that `cwd` is in, or None (then jobs use the installed package)."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        result = subprocess.run(
            [git, "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    root = Path(result.stdout.strip())
    return root if (root / "automodel" / "__init__.py").is_file() else None


def placeholders(text: str) -> list[tuple[str, str | None]]:
    """(name, default) of every `${VAR}` / `${VAR,default}` in `text`, in order."""
    return [(m.group(1), m.group(2)) for m in PLACEHOLDER.finditer(text)]
