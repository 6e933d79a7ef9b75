"""Names, discovery and crash-safe file operations for the checkpoint directory layout.

A checkpoint directory is only ever published by renaming a finished temporary directory, so a directory named
``epoch_<E>_step_<S>`` is complete by construction; ``is_complete`` still checks, in case a person copied or pruned one.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
from pathlib import Path

logger = logging.getLogger(__name__)

LATEST = "LATEST"
TMP_PREFIX = ".tmp-"
REQUIRED_FILES = ("meta.json", "train_state.json")
_NAME = re.compile(r"^epoch_(\d+)_step_(\d+)$")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch_{epoch}_step_{step}"


def parse_name(name: str) -> tuple[int, int] | None:
    """``(epoch, step)`` of a checkpoint directory name, or None for anything else."""
    match = _NAME.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def missing_parts(path: Path) -> list[str]:
    """What a checkpoint directory lacks to be complete (empty when complete)."""
    if not path.is_dir():
        return ["the directory itself"]
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if not (path / "state" / ".metadata").is_file():
        missing.append("state/")
    return missing


def is_complete(path: Path) -> bool:
    return not missing_parts(path)


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints in ``checkpoint_dir``, oldest first (by step, then epoch)."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for entry in checkpoint_dir.iterdir():
        position = parse_name(entry.name)
        if position is not None and is_complete(entry):
            found.append((position[1], position[0], entry))
    return [path for _, _, path in sorted(found)]


def read_latest(checkpoint_dir: Path) -> Path | None:
    """The directory ``LATEST`` names (which may not exist), or None when there is no ``LATEST``."""
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return None
    return checkpoint_dir / pointer.read_text().strip()


def temp_dir_name(epoch: int, step: int) -> str:
    return f"{TMP_PREFIX}{checkpoint_name(epoch, step)}-{secrets.token_hex(4)}"


def stale_temp_entries(checkpoint_dir: Path) -> list[Path]:
    """Leftovers of killed saves: temporary checkpoint directories and ``LATEST`` temp files."""
    return sorted(entry for entry in checkpoint_dir.iterdir() if entry.name.startswith(TMP_PREFIX))


# --- durable writes -------------------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    # makes a rename / new entry in `path` survive a power loss, not only a process kill
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (files written by libraries that do not fsync)."""
    for directory, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(directory, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(Path(directory))


def write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` so a reader sees the old or the new content, never a partial one."""
    temp = path.with_name(f"{TMP_PREFIX}{path.name}-{secrets.token_hex(4)}")
    write_text(temp, text)
    os.replace(temp, path)
    fsync_dir(path.parent)


def remove_dir(path: Path) -> None:
    """Delete a directory so a crash half-way never leaves a half-deleted directory that looks like a checkpoint."""
    doomed = path.with_name(f"{TMP_PREFIX}deleting-{path.name}-{secrets.token_hex(4)}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)
