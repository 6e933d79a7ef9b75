"""Image references in conversations, and loading them lazily with errors that name the image.

An image reference is a local path (absolute, or relative to the dataset's ``image_root``), a ``file://`` URL, a
``data:image/...;base64,`` URL, an ``http(s)://`` URL, raw bytes, a ``{"bytes": ..., "path": ...}`` dict (how the
Hugging Face ``datasets.Image`` feature stores images), or an already-decoded ``PIL.Image``.
"""

from __future__ import annotations

import base64
import io
import logging
import os
from pathlib import Path
from typing import Any, Literal, get_args

from automodel.components.datasets._errors import DatasetError

logger = logging.getLogger(__name__)

OnBadImage = Literal["error", "skip"]
ON_BAD_IMAGE_CHOICES: tuple[str, ...] = get_args(OnBadImage)


class VLMDataError(DatasetError):
    """A problem with VLM data (an unreadable image, a bad conversation, a batch that cannot be built).

    Raised inside DataLoader workers too: torch re-raises it in the main process with the worker's traceback as
    the message, so the constructor keeps only the original one-line message.
    """

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Original Traceback" in message:
            last = message.rstrip().splitlines()[-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class ImageLoadError(VLMDataError):
    """An image that is missing or cannot be decoded."""


def check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE_CHOICES:
        raise VLMDataError(
            f"on_bad_image must be one of {list(ON_BAD_IMAGE_CHOICES)}, got {on_bad_image!r} ('error' stops the run "
            "at the first unreadable image, 'skip' leaves the sample out with a warning)"
        )


def describe(ref: Any) -> str:
    """A short name for an image reference, for messages."""
    if isinstance(ref, dict):
        return str(ref.get("path") or f"<{len(ref.get('bytes') or b'')} bytes>")
    if isinstance(ref, (bytes, bytearray)):
        return f"<{len(ref)} bytes>"
    if isinstance(ref, str):
        return ref if not ref.startswith("data:") else ref[:40] + "..."
    return f"<{type(ref).__name__}>"


def local_path(ref: Any, root: Path | None) -> Path | None:
    """The file an image reference points to, or None when it is not a local file (bytes, URL, PIL image)."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return None
        ref = ref.get("path")
    if isinstance(ref, os.PathLike):
        ref = os.fspath(ref)
    if not isinstance(ref, str) or ref.startswith(("data:", "http://", "https://")):
        return None
    path = Path(os.path.expanduser(ref.removeprefix("file://")))
    return path if path.is_absolute() or root is None else root / path


def load_image(ref: Any, root: Path | None = None) -> Any:
    """Decode one image reference to an RGB ``PIL.Image``; raise ImageLoadError naming it when that fails."""
    from PIL import Image, UnidentifiedImageError

    original = ref
    try:
        if isinstance(ref, Image.Image):
            return ref.convert("RGB")
        path = local_path(ref, root)
        if path is not None:
            if not path.is_file():
                raise ImageLoadError(f"image file {path} does not exist")
            with Image.open(path) as image:
                return image.convert("RGB")
        if isinstance(ref, dict):
            ref = ref.get("bytes")
        if isinstance(ref, (bytes, bytearray)):
            return Image.open(io.BytesIO(ref)).convert("RGB")
        if isinstance(ref, str) and ref.startswith("data:"):
            return Image.open(io.BytesIO(base64.b64decode(ref.split(",", 1)[1]))).convert("RGB")
        if isinstance(ref, str):  # http(s): transformers' loader fetches it
            from transformers.image_utils import load_image as fetch

            return fetch(ref).convert("RGB")
    except ImageLoadError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:  # PIL's decode errors
        reason = f"{type(error).__name__}: {error}"
        raise ImageLoadError(f"image {describe(original)} could not be read: {reason}") from error
    raise ImageLoadError(
        f"unsupported image reference {describe(original)}; use a file path, a file:// / data: / http(s) URL, bytes, or a "
        "PIL image"
    )
