"""Names, discovery, completeness and crash-safe file operations for the checkpoint directory layout.

A checkpoint directory is only ever published by renaming a finished temporary directory, and its last file is
``manifest.json``, which lists every other file with its size and sha256. A directory is *complete* when its manifest
parses and every file it lists is there with the listed size; ``Checkpointer.load`` also checks the hashes of what it
reads. A directory holding only some of a checkpoint's files (copied or pruned by hand) is never complete.

Checkpoints written before the manifest existed (``state/.metadata``, ``scheduler.pt``, ``rng_rank<R>.pt``) are
pickles, which run code when loaded: they count only when ``AUTOMODEL_TRUST_PICKLED_CHECKPOINTS=1`` is set (an
environment variable, never a config key, so a config from someone else cannot turn it on).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger(__name__)

LATEST = "LATEST"
TMP_PREFIX = ".tmp-"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "automodel-checkpoint"
MANIFEST_VERSION = 2
REQUIRED_FILES = ("meta.json", "train_state.json", "state/extra.json")
TRUST_PICKLES_ENV = "AUTOMODEL_TRUST_PICKLED_CHECKPOINTS"
_LEGACY_REQUIRED = ("meta.json", "train_state.json", "state/.metadata")
_NAME = re.compile(r"epoch_([0-9]+)_step_([0-9]+)")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"epoch_{epoch}_step_{step}"


def parse_name(name: str) -> tuple[int, int] | None:
    """``(epoch, step)`` of a checkpoint directory name, or None for anything else."""
    match = _NAME.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def trusts_pickles() -> bool:
    return os.environ.get(TRUST_PICKLES_ENV, "") == "1"


def is_legacy(path: Path) -> bool:
    """A checkpoint of the pickle-based format (no manifest, DCP's pickled ``state/.metadata``)."""
    return not (path / MANIFEST).exists() and (path / "state" / ".metadata").is_file()


class ManifestError(ValueError):
    """manifest.json is missing or malformed (internal: callers turn it into a sentence)."""


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size": int, "sha256": hex}}`` from ``path/manifest.json``; raises ManifestError."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise ManifestError(f"{MANIFEST} is missing")
    try:
        document = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ManifestError(f"{MANIFEST} is unreadable ({error})") from None
    if not isinstance(document, dict) or document.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{MANIFEST} is not an automodel checkpoint manifest")
    if document.get("version") != MANIFEST_VERSION:
        raise ManifestError(
            f"{MANIFEST} has version {document.get('version')!r}, this automodel reads {MANIFEST_VERSION}"
        )
    files = document.get("files")
    if not isinstance(files, dict):
        raise ManifestError(f"{MANIFEST} has no file list")
    for name, entry in files.items():
        if not _is_plain_relative(name):
            raise ManifestError(f"{MANIFEST} lists {name!r}, which is not a path inside the checkpoint")
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not _SHA256.fullmatch(str(digest)):
            raise ManifestError(f"{MANIFEST} has a malformed entry for {name!r}")
    return files


def _is_plain_relative(name: Any) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = PurePosixPath(name).parts
    return PurePosixPath(name).as_posix() == name and not name.startswith("/") and not {"..", "."} & set(parts)


def size_problem(name: str, actual: int, expected: int) -> str | None:
    if actual == expected:
        return None
    if actual < expected:
        return f"{name} is truncated ({actual} of {expected} bytes)"
    return f"{name} has {actual} bytes, not the {expected} bytes {MANIFEST} lists"


def missing_parts(path: Path) -> list[str]:
    """Why a checkpoint directory is not complete, one sentence each (empty when complete). Reads sizes, not data."""
    if not path.is_dir():
        return ["the directory does not exist"]
    if is_legacy(path):
        if trusts_pickles():
            return [f"{name} is missing" for name in _LEGACY_REQUIRED if not (path / name).is_file()]
        return [f"{MANIFEST} is missing (an old pickle-based checkpoint: see {TRUST_PICKLES_ENV})"]
    try:
        files = read_manifest(path)
    except ManifestError as error:
        return [str(error)]
    problems = [f"{MANIFEST} does not list {name}" for name in REQUIRED_FILES if name not in files]
    root = path.resolve()
    for name, entry in sorted(files.items()):
        file = path / name
        if not file.resolve().is_relative_to(root):
            problems.append(f"{name} points outside the checkpoint")
        elif not file.is_file():
            problems.append(f"{name} is missing")
        else:
            problem = size_problem(name, file.stat().st_size, entry["size"])
            if problem:
                problems.append(problem)
    return problems


def is_complete(path: Path) -> bool:
    return not missing_parts(path)


def _inside(entry: Path, root: Path) -> bool:
    # a symlink named like a checkpoint may point anywhere (a downloaded run dir can hold one): only follow it when it
    # stays in the directory
    return entry.resolve().parent == root.resolve()


def checkpoint_entries(checkpoint_dir: Path) -> list[Path]:
    """Directories named ``epoch_<E>_step_<S>`` in ``checkpoint_dir`` (not resolving outside it), oldest first."""
    if not checkpoint_dir.is_dir():
        return []
    found = []
    for entry in checkpoint_dir.iterdir():
        position = parse_name(entry.name)
        if position is None:
            continue
        if not _inside(entry, checkpoint_dir):
            logger.warning(
                "'%s' is a link to '%s', outside '%s'; it is ignored", entry, entry.resolve(), checkpoint_dir
            )
            continue
        found.append((position[1], position[0], entry))
    return [path for _, _, path in sorted(found)]


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """Complete checkpoints in ``checkpoint_dir``, oldest first (by step, then epoch)."""
    return [entry for entry in checkpoint_entries(checkpoint_dir) if is_complete(entry)]


def read_latest(checkpoint_dir: Path) -> tuple[Path | None, str | None]:
    """``(directory LATEST names, None)``; ``(None, None)`` without ``LATEST``; ``(None, why)`` when it is invalid.

    ``LATEST`` may only hold a bare ``epoch_<E>_step_<S>`` name of a directory inside ``checkpoint_dir``: no path,
    no ``..``, no link leading elsewhere, since a checkpoint dir from someone else must not send the loader to files
    outside it.
    """
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return None, None
    try:
        with open(pointer, encoding="utf-8") as f:
            text = f.read(256)
    except (OSError, UnicodeDecodeError) as error:
        return None, f"cannot be read ({error})"
    name = text.strip()
    if parse_name(name) is None:
        return None, f"holds {text[:80]!r}, which is not a checkpoint name (epoch_<E>_step_<S>)"
    if not _inside(checkpoint_dir / name, checkpoint_dir):
        return None, f"names '{name}', a link to '{(checkpoint_dir / name).resolve()}' outside '{checkpoint_dir}'"
    return checkpoint_dir / name, None


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
