"""Every repository path that the docs, the README and the code's docstrings point readers at exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# a path of the repository as written in prose: starts at a top-level folder, ends in a source/doc extension
PATH = re.compile(r"(?<![\w./~-])((?:automodel|examples|benchmarks|docs|tests)/[\w./-]*\.(?:py|md|yaml|jsonl))\b")
RUNTIME = ("slurm_jobs", "k8s_jobs", "checkpoints")  # folders a run creates, not files of the repository


def test_referenced_repository_paths_exist():
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "automodel").rglob("*.py")]
    missing = set()
    for file in files:
        for match in PATH.finditer(file.read_text(encoding="utf-8")):
            path = match.group(1)
            if any(part in path for part in RUNTIME) or re.search(r"[A-Z]{3,}|\bX\b", path):
                continue  # placeholders such as examples/llm/CONFIG.yaml
            if not (REPO / path).exists():
                missing.add(f"{file.relative_to(REPO)}: {path}")
    assert not missing, sorted(missing)
