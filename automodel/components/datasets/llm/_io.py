"""Load rows from a local file, a local directory or the Hugging Face Hub, with HF split-slice syntax.

``source`` is one of:
- a local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file (or a list of them): the file is one split;
- a local directory holding files named by split (``train.jsonl``, ``validation.jsonl``, ``train-00000-of-00002.parquet``,
  also under ``data/``), or a folder written by ``datasets.save_to_disk``;
- a Hugging Face Hub dataset id (``rajpurkar/squad``), loaded with ``datasets.load_dataset(id, split=...)``;
- an in-memory ``datasets.Dataset``.

``split`` is a split name with an optional slice, as in HF: ``train``, ``train[:200]``, ``train[:90%]``,
``train[95%:]``, ``validation[-50:]``. This is how a validation split is carved from a single file.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from automodel.components.datasets._errors import DatasetError

logger = logging.getLogger(__name__)

_BUILDER_BY_EXT = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
_SPLIT_RE = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[([^\]:]*):([^\]:]*)\])?$")
_BOUND_RE = re.compile(r"^-?\d+%?$")
_SHARD_RE = re.compile(r"^(.+?)-\d+-of-\d+$")


def parse_split(split: str) -> tuple[str, slice | None]:
    """``"train[:90%]"`` -> ``("train", slice(None, "90%"))`` (bounds kept as text until the length is known)."""
    match = _SPLIT_RE.match(split.replace(" ", "")) if isinstance(split, str) else None
    if match is None or any(b and not _BOUND_RE.match(b) for b in match.groups()[1:]):
        raise DatasetError(
            f"split {split!r} is not understood; use a split name with an optional slice such as 'train', "
            "'train[:200]', 'train[:90%]' or 'train[95%:]'"
        )
    name, start, stop = match.groups()
    if start is None:
        return name, None
    return name, slice(start or None, stop or None)


def _bound(text: str | None, num_rows: int) -> int | None:
    if text is None:
        return None
    if text.endswith("%"):
        # Percent bounds round to the closest row, like datasets' ReadInstruction.
        return int(round(int(text[:-1]) * num_rows / 100.0))
    return int(text)


def apply_split_slice(dataset: Any, bounds: slice | None) -> Any:
    if bounds is None:
        return dataset
    num_rows = len(dataset)
    start, stop, _ = slice(_bound(bounds.start, num_rows), _bound(bounds.stop, num_rows)).indices(num_rows)
    # datasets rejects an empty range that starts at the end, so an empty slice selects an empty list.
    return dataset.select(range(start, stop) if stop > start else [])


def looks_local(source: str) -> bool:
    """A path-like string is never sent to the Hub: it starts with ``.``, ``/``, ``~`` or has a data extension."""
    return (
        source.startswith((".", "/", "~"))
        or Path(source).suffix.lower() in _BUILDER_BY_EXT
        or os.path.exists(os.path.expanduser(source))
    )


def _builder_for(files: list[Path], where: str) -> str:
    builders = {_BUILDER_BY_EXT.get(f.suffix.lower()) for f in files}
    if None in builders or len(builders) != 1:
        raise DatasetError(
            f"{where}: cannot load {[str(f) for f in files]}; use files of one kind among {sorted(_BUILDER_BY_EXT)}"
        )
    return builders.pop()


def _load_files(files: list[Path], where: str) -> Any:
    import datasets

    builder = _builder_for(files, where)
    try:
        return datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    except (ValueError, TypeError, OSError) as exc:
        raise DatasetError(f"{where}: could not read {builder} data: {_one_line(exc)}") from exc
    except Exception as exc:
        # pyarrow/json parse errors have no common base class worth importing; the message names the problem.
        if type(exc).__module__.startswith(("pyarrow", "datasets")):
            raise DatasetError(f"{where}: could not read {builder} data: {_one_line(exc)}") from exc
        raise


def _split_files(directory: Path) -> dict[str, list[Path]]:
    by_split: dict[str, list[Path]] = {}
    for folder in (directory, directory / "data"):
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.is_file() and path.suffix.lower() in _BUILDER_BY_EXT:
                stem = path.name[: -len(path.suffix)]
                shard = _SHARD_RE.match(stem)
                by_split.setdefault(shard.group(1) if shard else stem, []).append(path)
    return by_split


def _load_directory(directory: Path, split_name: str, where: str) -> Any:
    import datasets

    if (directory / "dataset_dict.json").is_file():
        dataset_dict = datasets.load_from_disk(str(directory))
        if split_name not in dataset_dict:
            raise DatasetError(
                f"{where}: split {split_name!r} does not exist; available splits: {sorted(dataset_dict)}"
            )
        return dataset_dict[split_name]
    if (directory / "state.json").is_file():
        _warn_single_split(split_name, where)
        return datasets.load_from_disk(str(directory))
    by_split = _split_files(directory)
    if not by_split:
        raise DatasetError(
            f"{where}: the directory has no data files; put files named by split there (train.jsonl, "
            f"validation.jsonl; extensions {sorted(_BUILDER_BY_EXT)}) or a datasets.save_to_disk folder"
        )
    if split_name not in by_split:
        raise DatasetError(
            f"{where}: split {split_name!r} does not exist (no file named {split_name}.jsonl or similar); "
            f"available splits: {sorted(by_split)}"
        )
    return _load_files(by_split[split_name], where)


def _warn_single_split(split_name: str, where: str) -> None:
    if split_name != "train":
        logger.warning(
            "%s: a single file holds one split, so the split name %r is ignored (slices like '[95%%:]' still apply)",
            where,
            split_name,
        )


def _load_hub(dataset_id: str, split_name: str, where: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(dataset_id, split=split_name)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise DatasetError(f"{where}: split {split_name!r} does not exist: {_one_line(exc)}") from exc
        raise DatasetError(f"{where}: could not load the dataset: {_one_line(exc)}") from exc
    except Exception as exc:
        if isinstance(exc, (OSError, ConnectionError)) or type(exc).__module__.startswith(
            ("huggingface_hub", "datasets", "requests", "httpx")
        ):
            raise DatasetError(
                f"could not load dataset {dataset_id!r} from the Hugging Face Hub (offline? set HF_DATASETS_OFFLINE "
                f"/ use a local file): {_one_line(exc)}"
            ) from exc
        raise


def _one_line(exc: BaseException) -> str:
    """The message, plus the root cause's (datasets wraps parse errors in a generic "error while generating")."""
    root = exc
    for _ in range(20):  # a bounded walk: exception chains can, in principle, loop
        if (parent := root.__cause__ or root.__context__) is None:
            break
        root = parent
    text = str(exc) if root is exc else f"{exc}: {type(root).__name__}: {root}"
    text = " ".join(text.split())
    return text[:300] + ("..." if len(text) > 300 else "")


def load_rows(source: Any, split: str = "train", *, limit: int | None = None) -> tuple[Any, str]:
    """Load ``split`` of ``source`` as a ``datasets.Dataset``; return it and a description for messages."""
    import datasets

    split_name, bounds = parse_split(split)
    where = f"dataset {source!r} split {split!r}" if not isinstance(source, datasets.Dataset) else f"split {split!r}"
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit_dataset_samples must be a positive integer or null, got {limit!r}")

    if isinstance(source, datasets.Dataset):
        rows = source
    elif isinstance(source, (list, tuple)) and source and all(isinstance(s, (str, os.PathLike)) for s in source):
        paths = [Path(os.path.expanduser(str(s))) for s in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{where}: file(s) not found: {missing}; check the paths (relative to the cwd)")
        _warn_single_split(split_name, where)
        rows = _load_files(paths, where)
    elif isinstance(source, (str, os.PathLike)):
        text = str(source)
        path = Path(os.path.expanduser(text))
        if path.is_dir():
            rows = _load_directory(path, split_name, where)
        elif path.is_file():
            _warn_single_split(split_name, where)
            rows = _load_files([path], where)
        elif looks_local(text):
            raise DatasetError(
                f"{where}: local path {text!r} does not exist (cwd: {os.getcwd()}); fix the path or give a Hugging "
                "Face Hub dataset id"
            )
        else:
            rows = _load_hub(text, split_name, where)
    else:
        raise DatasetError(
            f"the dataset source must be a path, a list of paths or a Hugging Face Hub id, got {type(source).__name__}"
        )

    rows = apply_split_slice(rows, bounds)
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    if len(rows) == 0:
        raise DatasetError(f"{where}: no rows to use (empty file or slice); check the data and the split slice")
    return rows, where


def require_columns(rows: Any, columns: dict[str, str], where: str, fix: str) -> None:
    """Raise if a column in ``columns`` (``{role: column name}``) is missing from ``rows``; ``fix`` says what to change."""
    present = list(rows.column_names)
    for role, column in columns.items():
        if column not in present:
            raise DatasetError(f"{where}: column {column!r} (for {role}) not found; columns present: {present}; {fix}")
