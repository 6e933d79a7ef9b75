"""VLM dataset formats, under the reference system's names (``make_cord_v2_dataset``, ``make_medpix_dataset``,
``make_rdr_dataset``) plus generic ones for your own data.

Every function returns a :class:`VLMConversationDataset` of ``{"conversation": messages, "row": int}`` samples;
tokenization happens in the collate function, with the processor (see ``collate_fns``).

``path_or_dataset`` is a local ``.jsonl`` / ``.json`` file, a directory with files named by split
(``train.jsonl``, ``validation.jsonl``; or parquet / ``save_to_disk`` folders), a Hugging Face Hub dataset id, or an
in-memory ``datasets.Dataset``. ``split`` takes HF slices (``train[:200]``, ``train[95%:]``). Relative image paths
are relative to ``image_root`` (default: the folder of the data file).
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

from automodel.components.datasets.llm._io import _bound, load_rows, parse_split
from automodel.components.datasets.vlm._conversation import VLMConversationDataset, normalize_messages
from automodel.components.datasets.vlm._images import OnBadImage, VLMDataError

_JSON_SUFFIXES = (".jsonl", ".json")


# --- rows ---------------------------------------------------------------------------------------------------------
def _read_json_rows(path: Path, where: str) -> list[dict[str, Any]]:
    """A .jsonl file (one object per line) or a .json file holding a list of objects; errors name the line."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise VLMDataError(f"{where}: {path} is not valid JSON: {error}") from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise VLMDataError(f"{where}: line {number} of {path} is not valid JSON: {error}") from None
    bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
    if bad is not None:
        raise VLMDataError(f"{where}: row {bad} of {path} is a {type(rows[bad]).__name__}; every row must be an object")
    return rows


def _json_file_for(source: Any, split_name: str) -> Path | None:
    """The local JSON(L) file `source` names for `split_name`, if it is one (else a loader for other kinds is used)."""
    if not isinstance(source, (str, os.PathLike)):
        return None
    path = Path(os.path.expanduser(os.fspath(source)))
    if path.is_file() and path.suffix in _JSON_SUFFIXES:
        return path
    if path.is_dir():
        for folder in (path, path / "data"):
            for suffix in _JSON_SUFFIXES:
                if (folder / f"{split_name}{suffix}").is_file():
                    return folder / f"{split_name}{suffix}"
    return None


def _undecoded_images(rows: Any) -> Any:
    """Cast image columns to ``Image(decode=False)``: samples then carry bytes/paths, decoded (and reported) by us."""
    import datasets

    for name, feature in rows.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            rows = rows.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, (datasets.Sequence, datasets.List)) and isinstance(feature.feature, datasets.Image):
            rows = rows.cast_column(name, type(feature)(datasets.Image(decode=False)))
    return rows


def load_vlm_rows(
    path_or_dataset: Any, split: str, limit: int | None, image_root: str | None
) -> tuple[Any, str, Path | None]:
    """(rows, description for messages, folder that relative image paths are relative to)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise VLMDataError(f"limit_dataset_samples must be a positive integer or null, got {limit!r}")
    split_name, bounds = parse_split(split)
    json_file = _json_file_for(path_or_dataset, split_name)
    if json_file is None:
        rows, where = load_rows(path_or_dataset, split, limit=limit)
        root = image_root if image_root is not None else _default_root(path_or_dataset)
        return _undecoded_images(rows), where, Path(root).expanduser() if root is not None else None
    where = f"dataset {os.fspath(path_or_dataset)!r} split {split!r}"
    rows = _read_json_rows(json_file, where)
    if bounds is not None:
        start, stop, _ = slice(_bound(bounds.start, len(rows)), _bound(bounds.stop, len(rows))).indices(len(rows))
        rows = rows[start:stop]
    rows = rows[:limit] if limit is not None else rows
    if not rows:
        raise VLMDataError(f"{where}: no rows to use (empty file or slice); check the data and the split slice")
    root = Path(image_root).expanduser() if image_root is not None else json_file.parent
    return rows, where, root


def _default_root(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)) and Path(os.path.expanduser(os.fspath(source))).exists():
        path = Path(os.path.expanduser(os.fspath(source)))
        return str(path if path.is_dir() else path.parent)
    return None


def _columns(rows: Any) -> list[str]:
    if isinstance(rows, list):
        return sorted({key for row in rows for key in row})
    return list(rows.column_names)


def _require(rows: Any, columns: dict[str, str | None], where: str, fix: str) -> None:
    present = _columns(rows)
    for role, column in columns.items():
        if column is not None and column not in present:
            raise VLMDataError(f"{where}: column {column!r} (for {role}) not found; columns present: {present}; {fix}")


# --- formats --------------------------------------------------------------------------------------------------------
def _conversation_row(
    row: dict[str, Any], number: int, *, messages_column: str, images_column: str | None, where: str
) -> list[dict[str, Any]]:
    images = row.get(images_column) if images_column else None
    if images is not None and not isinstance(images, list):
        images = [images]
    return normalize_messages(row[messages_column], row=number, where=where, images=images)


def make_conversation_dataset(
    path_or_dataset: Any,
    split: str = "train",
    messages_column: str = "messages",
    images_column: str | None = "images",
    image_root: str | None = None,
    on_bad_image: OnBadImage = "error",
    limit_dataset_samples: int | None = None,
) -> VLMConversationDataset:
    """OpenAI-style conversations with image parts, e.g. one JSONL line per sample::

        {"messages": [{"role": "user", "content": [{"type": "image", "image": "imgs/0.png"},
                                                   {"type": "text", "text": "What shape is this?"}]},
                      {"role": "assistant", "content": "A red circle."}]}

    Image parts: ``{"type": "image", "image": PATH}`` (or ``path`` / ``url``), ``{"type": "image_url",
    "image_url": {"url": ...}}``, or a bare ``{"type": "image"}`` filled in order from ``images_column`` (a list
    of images per row, as HF datasets store them). Loss goes on every assistant turn and its end-of-turn token.
    """
    rows, where, root = load_vlm_rows(path_or_dataset, split, limit_dataset_samples, image_root)
    _require(rows, {"messages_column": messages_column}, where, "set messages_column to the conversation column")
    images_column = images_column if images_column in _columns(rows) else None
    to_messages = functools.partial(
        _conversation_row, messages_column=messages_column, images_column=images_column, where=where
    )
    # Rows of a JSON file are checked up front (structure, image files); HF rows are checked as they are read.
    return VLMConversationDataset(
        rows, to_messages, where=where, image_root=root, on_bad_image=on_bad_image, check_rows=isinstance(rows, list)
    )


def _qa_row(
    row: dict[str, Any],
    number: int,
    *,
    image_column: str,
    question_column: str | None,
    answer_column: str,
    question: str | None,
    system_prompt: str | None,
    where: str,
) -> list[dict[str, Any]]:
    prompt = row[question_column] if question_column is not None else question
    answer = row[answer_column]
    if not isinstance(prompt, str) or not isinstance(answer, str) or not answer.strip():
        raise VLMDataError(
            f"{where}: row {number}: the question and answer must be non-empty strings, got "
            f"{type(prompt).__name__} {prompt!r:.60} and {type(answer).__name__} {answer!r:.60}"
        )
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [
        {"role": "user", "content": [{"type": "image", "image": row[image_column]}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": answer},
    ]
    return normalize_messages(messages, row=number, where=where)


def make_image_qa_dataset(
    path_or_dataset: Any,
    split: str = "train",
    image_column: str = "image",
    question_column: str | None = "question",
    answer_column: str = "answer",
    question: str | None = None,
    system_prompt: str | None = None,
    image_root: str | None = None,
    on_bad_image: OnBadImage = "error",
    limit_dataset_samples: int | None = None,
) -> VLMConversationDataset:
    """One image, a question and its answer per row (a Hub dataset with an image column, or JSONL with paths).

    The user turn is the image then the question; the assistant turn is the answer (the loss). With
    ``question_column: null``, every row asks the fixed ``question`` (e.g. "Describe this image.").
    """
    if question_column is None and not question:
        raise VLMDataError("make_image_qa_dataset: with question_column: null, set question to the prompt to use")
    rows, where, root = load_vlm_rows(path_or_dataset, split, limit_dataset_samples, image_root)
    _require(
        rows,
        {"image_column": image_column, "question_column": question_column, "answer_column": answer_column},
        where,
        "set image_column / question_column / answer_column to the right columns",
    )
    to_messages = functools.partial(
        _qa_row,
        image_column=image_column,
        question_column=question_column,
        answer_column=answer_column,
        question=question,
        system_prompt=system_prompt,
        where=where,
    )
    return VLMConversationDataset(
        rows, to_messages, where=where, image_root=root, on_bad_image=on_bad_image, check_rows=isinstance(rows, list)
    )


def make_medpix_dataset(
    path_or_dataset: Any = "mmoukouba/MedPix-VQA", split: str = "train", **options: Any
) -> VLMConversationDataset:
    """The reference system's image + question/answer demo format (MedPix-VQA: ``image_id``, ``question``,
    ``answer`` columns); options as in ``make_image_qa_dataset``."""
    options.setdefault("image_column", "image_id")
    return make_image_qa_dataset(path_or_dataset, split, **options)


def make_rdr_dataset(
    path_or_dataset: Any = "quintend/rdr-items", split: str = "train", **options: Any
) -> VLMConversationDataset:
    """The reference system's image-description format (``image``, ``text`` columns): "Describe this image." ->
    text; options as in ``make_image_qa_dataset``."""
    options.setdefault("question_column", None)
    options.setdefault("question", "Describe this image.")
    options.setdefault("answer_column", "text")
    return make_image_qa_dataset(path_or_dataset, split, **options)


# --- CORD-v2 --------------------------------------------------------------------------------------------------------
def json_to_tokens(value: Any, sort_keys: bool = True) -> str:
    """A receipt parse as tagged text (Donut's format): ``{"menu": {"nm": "Tea"}}`` -> ``<s_menu><s_nm>Tea</s_nm>
    </s_menu>``; list items are joined by ``<sep/>``."""
    if isinstance(value, dict):
        keys = sorted(value) if sort_keys else list(value)
        return "".join(f"<s_{key}>{json_to_tokens(value[key], sort_keys)}</s_{key}>" for key in keys)
    if isinstance(value, list):
        return "<sep/>".join(json_to_tokens(item, sort_keys) for item in value)
    return str(value)


TargetFormat = Literal["tokens", "json"]
TARGET_FORMATS: tuple[str, ...] = get_args(TargetFormat)


def _cord_row(row: dict[str, Any], number: int, *, prompt: str, target_format: str, where: str) -> list[dict[str, Any]]:
    try:
        truth = json.loads(row["ground_truth"]) if isinstance(row["ground_truth"], str) else row["ground_truth"]
        parse = truth["gt_parses"][0] if "gt_parses" in truth else truth["gt_parse"]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as error:
        raise VLMDataError(
            f"{where}: row {number}: ground_truth must be JSON with a 'gt_parse' object (or a 'gt_parses' list), as "
            f"in naver-clova-ix/cord-v2 ({type(error).__name__}: {error})"
        ) from None
    text = json_to_tokens(parse) if target_format == "tokens" else json.dumps(parse, sort_keys=True, ensure_ascii=False)
    messages = [
        {"role": "user", "content": [{"type": "image", "image": row["image"]}, {"type": "text", "text": prompt}]},
        {"role": "assistant", "content": text},
    ]
    return normalize_messages(messages, row=number, where=where)


def make_cord_v2_dataset(
    path_or_dataset: Any = "naver-clova-ix/cord-v2",
    split: str = "train",
    prompt: str = "Describe this image.",
    target_format: TargetFormat = "tokens",
    image_root: str | None = None,
    on_bad_image: OnBadImage = "error",
    limit_dataset_samples: int | None = None,
) -> VLMConversationDataset:
    """CORD-v2 receipts: the image, and its parse (``ground_truth``'s ``gt_parse``) as the answer.

    ``target_format: tokens`` writes the parse as Donut-style tagged text (the reference system's format);
    ``json`` writes it as compact JSON with sorted keys.
    """
    if target_format not in TARGET_FORMATS:
        raise VLMDataError(f"target_format must be one of {list(TARGET_FORMATS)}, got {target_format!r}")
    rows, where, root = load_vlm_rows(path_or_dataset, split, limit_dataset_samples, image_root)
    _require(rows, {"image": "image", "ground truth": "ground_truth"}, where, "expected CORD-v2's columns")
    to_messages = functools.partial(_cord_row, prompt=prompt, target_format=target_format, where=where)
    return VLMConversationDataset(
        rows, to_messages, where=where, image_root=root, on_bad_image=on_bad_image, check_rows=isinstance(rows, list)
    )
