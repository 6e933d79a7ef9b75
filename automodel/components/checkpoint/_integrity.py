"""File hashes: the manifest a save writes last, and the check a load runs before it trusts a byte.

Hashing is spread over the ranks (each hashes the files it wrote, or its share of the files a load reads) and over
threads within a rank: ``hashlib`` releases the GIL on large buffers, so a few threads keep a fast disk busy.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from automodel.components.checkpoint import _layout

_CHUNK = 8 << 20
_THREADS = max(1, min(8, os.cpu_count() or 1))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_files(root: Path, files: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """``{path relative to root: {"size", "sha256"}}`` for ``files`` (hashed in parallel threads)."""
    files = sorted(set(files))
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = list(pool.map(sha256_file, files))
    return {
        file.relative_to(root).as_posix(): {"size": file.stat().st_size, "sha256": digest}
        for file, digest in zip(files, digests, strict=True)
    }


def all_files(root: Path) -> list[Path]:
    return sorted(Path(directory) / name for directory, _, names in os.walk(root) for name in names)


def manifest_text(entries: dict[str, dict[str, Any]]) -> str:
    document = {
        "format": _layout.MANIFEST_FORMAT,
        "version": _layout.MANIFEST_VERSION,
        "files": dict(sorted(entries.items())),
    }
    return json.dumps(document, indent=1) + "\n"


def verify(path: Path, files: dict[str, dict[str, Any]]) -> list[str]:
    """Problems of ``files`` (manifest entries) in checkpoint ``path``: a missing, truncated or corrupt file."""
    problems = []
    present = {}
    for name, entry in files.items():
        file = path / name
        if not file.is_file():
            problems.append(f"{name} is missing")
            continue
        problem = _layout.size_problem(name, file.stat().st_size, entry["size"])
        if problem:
            problems.append(problem)
        else:
            present[name] = file
    with ThreadPoolExecutor(_THREADS) as pool:
        digests = dict(zip(present, pool.map(sha256_file, present.values()), strict=True))
    problems += [
        f"{name} is corrupt (sha256 mismatch)" for name, digest in digests.items() if digest != files[name]["sha256"]
    ]
    return sorted(problems)


def safetensors_problem(file: Path, name: str) -> str | None:
    """Why a safetensors file cannot be whole (truncated, padded, bad header), from its JSON header; None if fine.

    The header states where every tensor's bytes end, so a cut-off file is recognised without any manifest.
    """
    size = file.stat().st_size
    try:
        with open(file, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(size, 100 << 20):
                raise ValueError(f"a header of {header_len} bytes")
            header = json.loads(f.read(header_len))
        ends = [
            entry["data_offsets"][1]
            for key, entry in header.items()
            if key != "__metadata__" and isinstance(entry, dict)
        ]
        expected = 8 + header_len + max(ends, default=0)
    except (OSError, struct.error, ValueError, KeyError, IndexError, TypeError) as error:
        return f"{name} is not a valid safetensors file ({error})"
    if size < expected:
        return f"{name} is truncated ({size} of {expected} bytes)"
    if size > expected:
        return f"{name} has {size - expected} bytes after its last tensor"
    return None
