"""Every `pip install 'automodel[EXTRA]'` that a message or a doc tells users to run names an extra that exists."""

import re
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]


def test_every_extra_named_in_code_and_docs_is_defined():
    extras = set(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    files = [*(REPO / "automodel").rglob("*.py"), *(REPO / "docs").glob("*.md"), REPO / "README.md"]
    named = {}
    for path in files:
        for match in re.finditer(r"automodel\[([a-z0-9_,-]+)\]", path.read_text(encoding="utf-8")):
            for extra in match.group(1).split(","):
                named.setdefault(extra, path.relative_to(REPO).as_posix())
    assert named, "no extra is named anywhere: the pattern is wrong"
    missing = {extra: where for extra, where in named.items() if extra not in extras}
    assert not missing, f"extras named but not defined in pyproject.toml: {missing}"
