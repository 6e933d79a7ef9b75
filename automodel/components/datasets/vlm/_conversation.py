"""Conversations with images: normalising OpenAI-style messages, and the lazy dataset every VLM format returns.

A sample is ``{"conversation": messages, "row": int}`` (the reference system's ``conversation`` key), where each
message is ``{"role": ..., "content": [parts]}`` and a part is ``{"type": "text", "text": str}`` or
``{"type": "image", "image": PIL.Image}``. Images are decoded when a sample is read, not when the dataset is built.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from automodel.components.datasets.vlm._images import (
    ImageLoadError,
    OnBadImage,
    VLMDataError,
    check_on_bad_image,
    load_image,
    local_path,
)

logger = logging.getLogger(__name__)

_ROLES = ("system", "user", "assistant")
_NUM_LISTED = 5  # missing files named in a message


def _image_ref(part: dict, pool: list[Any], row: int, turn: int, where: str) -> Any:
    """The image reference of an image part, taking the next image of the row's image column when it has none."""
    if part.get("type") == "image_url":
        url = part.get("image_url")
        ref = url.get("url") if isinstance(url, dict) else url
    else:
        ref = next((part[key] for key in ("image", "path", "url") if part.get(key) is not None), None)
    if ref is None:
        if not pool:
            raise VLMDataError(
                f"{where}: row {row}: message {turn} has an image part without an image, and the row has no (more) "
                "images in its image column; give each image part an 'image' path, or list the images in the "
                "images column in order"
            )
        ref = pool.pop(0)
    return ref


def normalize_messages(raw: Any, *, row: int, where: str, images: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """Check one conversation and return it with every content as a list of text / image parts.

    Image parts may be ``{"type": "image", "image": ref}`` (also ``path`` / ``url`` keys), OpenAI's
    ``{"type": "image_url", "image_url": {"url": ref}}``, or a bare ``{"type": "image"}`` that takes the next
    reference from ``images`` (a row's image column). Images are only allowed outside assistant turns.
    """
    if not isinstance(raw, list) or not raw:
        raise VLMDataError(
            f"{where}: row {row}: messages must be a non-empty list of {{role, content}} dicts, got "
            f"{type(raw).__name__}: {raw!r:.80}"
        )
    pool = list(images or [])
    messages = []
    for turn, message in enumerate(raw):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise VLMDataError(f"{where}: row {row}: message {turn} must be a dict with 'role' and 'content'")
        role = message["role"]
        if role not in _ROLES:
            raise VLMDataError(f"{where}: row {row}: message {turn} has role {role!r}; expected one of {list(_ROLES)}")
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise VLMDataError(
                f"{where}: row {row}: message {turn} content must be a string or a list of parts, got "
                f"{type(content).__name__}"
            )
        normalized = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                normalized.append({"type": "text", "text": part["text"]})
            elif kind in ("image", "image_url"):
                if role == "assistant":
                    raise VLMDataError(
                        f"{where}: row {row}: message {turn} is an assistant turn with an image; images belong in "
                        "user (or system) turns, the assistant's reply is text"
                    )
                normalized.append({"type": "image", "image": _image_ref(part, pool, row, turn, where)})
            else:
                raise VLMDataError(
                    f"{where}: row {row}: message {turn} has an unsupported content part {part!r:.80}; use "
                    "{'type': 'text', 'text': ...}, {'type': 'image', 'image': PATH} or "
                    "{'type': 'image_url', 'image_url': {'url': ...}}"
                )
        messages.append({"role": role, "content": normalized})
    if pool:
        raise VLMDataError(
            f"{where}: row {row}: {len(pool)} image(s) of the image column are not referenced by any image part; add "
            "one {'type': 'image'} part per image to the messages"
        )
    if messages[-1]["role"] != "assistant":
        raise VLMDataError(
            f"{where}: row {row}: the last message is from {messages[-1]['role']!r}; a training conversation must "
            "end with an assistant message"
        )
    return messages


def image_refs(messages: list[dict[str, Any]]) -> list[Any]:
    return [part["image"] for message in messages for part in message["content"] if part["type"] == "image"]


class VLMConversationDataset(Dataset):
    """Rows turned into conversations on access, with their images decoded then (lazily).

    Args:
        rows: a list of dicts or a ``datasets.Dataset`` (image columns are best cast to ``Image(decode=False)``, so
            undecoded bytes travel and decoding errors are reported here).
        to_messages: ``(row_dict, row_number) -> messages`` with image references (see ``normalize_messages``).
        where: the dataset's description for messages (file and split).
        image_root: folder that relative image paths are relative to.
        on_bad_image: ``error`` stops at the first missing or unreadable image (naming it); ``skip`` drops rows
            whose image files are missing when the dataset is built, and replaces a sample whose image cannot be
            decoded by the next readable one, with a warning.
        check_rows: convert every row once at build time (checks the messages and that image files exist).
    """

    def __init__(
        self,
        rows: Any,
        to_messages: Callable[[dict[str, Any], int], list[dict[str, Any]]],
        *,
        where: str,
        image_root: str | Path | None = None,
        on_bad_image: OnBadImage = "error",
        check_rows: bool = True,
    ) -> None:
        check_on_bad_image(on_bad_image)
        self.rows = rows
        self.to_messages = to_messages
        self.where = where
        self.image_root = Path(image_root).expanduser() if image_root is not None else None
        self.on_bad_image = on_bad_image
        self._indices = list(range(len(rows)))
        self._bad: set[int] = set()  # rows found unreadable in this process (skip mode)
        if check_rows:
            self._check_rows()
        if not self._indices:
            raise VLMDataError(f"{where}: no usable rows (all were skipped for missing images); check image_root")

    def _check_rows(self) -> None:
        missing: list[tuple[int, Path]] = []
        for row in self._indices:
            for ref in image_refs(self.to_messages(self.rows[row], row)):
                path = local_path(ref, self.image_root)
                if path is not None and not path.is_file():
                    missing.append((row, path))
        if not missing:
            return
        listed = "; ".join(f"row {row}: {path}" for row, path in missing[:_NUM_LISTED])
        more = f" (and {len(missing) - _NUM_LISTED} more)" if len(missing) > _NUM_LISTED else ""
        if self.on_bad_image == "error":
            root = f" relative to image_root {self.image_root}" if self.image_root else ""
            raise ImageLoadError(
                f"{self.where}: {len(missing)} image file(s) do not exist{root}: {listed}{more}; fix the paths or "
                "image_root, or set on_bad_image: skip to train without those rows"
            )
        bad_rows = {row for row, _ in missing}
        logger.warning(
            "%s: skipping %d row(s) whose image files do not exist: %s%s", self.where, len(bad_rows), listed, more
        )
        self._indices = [row for row in self._indices if row not in bad_rows]

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample index {index} out of range for a dataset of {len(self)} samples")
        index %= len(self)
        for attempt in range(len(self)):
            row = self._indices[(index + attempt) % len(self)]
            if row in self._bad:
                continue
            try:
                return {"conversation": self._load(row), "row": row}
            except ImageLoadError as error:
                if self.on_bad_image == "error":
                    raise ImageLoadError(f"{self.where}: row {row}: {error}; or set on_bad_image: skip") from None
                self._bad.add(row)
                logger.warning("%s: row %d skipped: %s", self.where, row, error)
        raise ImageLoadError(f"{self.where}: no row has a readable image (on_bad_image: skip skipped them all)")

    def _load(self, row: int) -> list[dict[str, Any]]:
        messages = self.to_messages(self.rows[row], row)
        loaded = []
        for message in messages:
            content = []
            for part in message["content"]:
                if part["type"] == "image":
                    part = {"type": "image", "image": load_image(part["image"], self.image_root)}
                content.append(part)
            loaded.append({"role": message["role"], "content": content})
        return loaded
