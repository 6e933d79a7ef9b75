"""Collate functions for VLM batches: conversations with images -> model inputs and shifted labels.

``default_collate_fn(examples, processor)`` renders each conversation with the processor's chat template, runs the
processor once over the batch (it resizes the images and expands each image placeholder into the model's image
tokens), and puts the loss on the assistant turns only, their end-of-turn token included: never on the prompt,
the images' tokens or the padding. Labels follow the data contract (``labels[t]`` is the token to predict at
position ``t``). ``collate_fn_for(processor)`` picks the collate function registered for a processor class in
``COLLATE_FNS``, else the default, which the four tested families (LLaVA, Qwen2.5-VL, Idefics3/SmolVLM, Gemma 3) use.

How the loss mask is found: assistant turns are character spans of the rendered text (prefix renders, as for
text chat); the processor reports where it expanded each image placeholder (``return_text_replacement_offsets``)
and each token's characters in the expanded text (``return_offsets_mapping``), so the spans map exactly onto
tokens, whatever the family's image expansion looks like.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import numpy as np
import torch

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm._tokenize import render_conversation
from automodel.components.datasets.vlm._images import VLMDataError, load_image

logger = logging.getLogger(__name__)

OnOverflow = Literal["truncate", "drop"]
ON_OVERFLOW_CHOICES: tuple[str, ...] = get_args(OnOverflow)
_TEXT_ONLY_OUTPUTS = ("offset_mapping", "text_replacement_offsets")

Span = tuple[int, int]


def _check_options(max_length: int | None, on_overflow: str) -> None:
    if on_overflow not in ON_OVERFLOW_CHOICES:
        raise VLMDataError(f"collate_fn on_overflow must be one of {list(ON_OVERFLOW_CHOICES)}, got {on_overflow!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise VLMDataError(f"collate_fn max_length must be an integer >= 2 or null (no limit), got {max_length!r}")


def _render(processor: Any, example: dict[str, Any], position: int) -> tuple[str, list[Span], list[Any], int]:
    """(rendered text, assistant character spans, the example's images in order, its row number)."""
    row = int(example.get("row", position))
    conversation = example.get("conversation")
    if not isinstance(conversation, list):
        raise VLMDataError(
            f"batch sample {position} (row {row}) has no 'conversation' list; VLM datasets yield "
            "{'conversation': [messages]} samples (see automodel.components.datasets.vlm.datasets)"
        )
    images, template_messages = [], []
    for message in conversation:
        content = message["content"]
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        for part in parts:
            if part.get("type") == "image":
                image = part.get("image")
                images.append(image if hasattr(image, "convert") else load_image(image))
        # The template only needs to know where images are; the pixels go to the processor separately.
        template_parts = [{"type": "image"} if p.get("type") == "image" else p for p in parts]
        template_messages.append({"role": message["role"], "content": template_parts})
    try:
        text, spans = render_conversation(processor, template_messages, row, "chat template")
    except DatasetError as error:
        raise VLMDataError(str(error)) from None
    placeholder = getattr(processor, "image_token", None)
    if placeholder and text.count(placeholder) != len(images):
        raise VLMDataError(
            f"row {row}: the rendered text has {text.count(placeholder)} image placeholder(s) {placeholder!r} but the "
            f"conversation has {len(images)} image(s); each image part must render one placeholder (remove literal "
            f"{placeholder!r} strings from the text, or fix the chat template)"
        )
    return text, spans, images, row


def _to_expanded(position: int, replacements: Sequence[dict[str, Any]]) -> int:
    """A character position of the rendered text, in the text after the processor expanded the image placeholders."""
    shift = 0
    for replacement in replacements:
        (start, end), (new_start, new_end) = replacement["span"], replacement["new_span"]
        if end <= position:
            shift += (new_end - new_start) - (end - start)
    return position + shift


def _overlaps(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    return (offsets[:, 0] < end) & (offsets[:, 1] > start)


def _masks(
    offsets: np.ndarray, spans: list[Span], replacements: Sequence[dict[str, Any]], real: np.ndarray
) -> tuple[np.ndarray, int]:
    """(which tokens carry loss, position of the last image token or -1) for one sample."""
    supervised = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        supervised |= _overlaps(offsets, _to_expanded(start, replacements), _to_expanded(end, replacements))
    image = np.zeros(len(offsets), dtype=bool)
    for replacement in replacements:
        image |= _overlaps(offsets, *replacement["new_span"])
    supervised &= ~image & real
    image_positions = np.flatnonzero(image & real)
    return supervised, int(image_positions[-1]) if len(image_positions) else -1


def _run_processor(processor: Any, texts: list[str], images: list[list[Any]], rows: list[int]) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if any(images):
        kwargs["images"] = images
    tokenizer = processor.tokenizer
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # the loss mask and truncation assume real tokens first
    try:
        return processor(
            text=texts,
            padding=True,
            return_tensors="pt",
            add_special_tokens=False,  # the chat template already wrote BOS and the turn markers
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
            **kwargs,
        )
    except (ValueError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise VLMDataError(f"the processor rejected the batch of rows {rows}: {reason}") from None
    finally:
        tokenizer.padding_side = padding_side


def default_collate_fn(
    examples: Sequence[dict[str, Any]],
    processor: Any,
    max_length: int | None = None,
    on_overflow: OnOverflow = "truncate",
) -> dict[str, torch.Tensor]:
    """Batch ``{"conversation", "row"}`` samples into model inputs plus ``labels`` (already shifted).

    Args:
        examples: samples of a VLM dataset; image parts hold PIL images (or paths, loaded here).
        processor: the model's processor (tokenizer + image processor + chat template).
        max_length: longest sequence in tokens, image tokens included; ``None`` for no limit.
        on_overflow: what to do with a longer sample: ``truncate`` cuts its end (an error when the cut would fall
            inside or before an image's tokens, or leave no answer token), ``drop`` leaves it out of the batch.
    """
    _check_options(max_length, on_overflow)
    if not examples:
        raise VLMDataError("default_collate_fn got an empty batch; check the dataset and the sampler length")
    if not getattr(processor, "chat_template", None):
        raise VLMDataError(
            f"the processor ({type(processor).__name__}) has no chat template; set processor.chat_template, or pick "
            "a collate function for this processor (dataloader.collate_fn)"
        )
    rendered = [_render(processor, example, i) for i, example in enumerate(examples)]
    texts, spans, images, rows = (list(column) for column in zip(*rendered, strict=True))
    batch = dict(_run_processor(processor, texts, images, rows))
    offsets = batch["offset_mapping"].numpy()
    replacements = batch.get("text_replacement_offsets") or [[] for _ in texts]
    input_ids, real = batch["input_ids"], batch["attention_mask"].bool().numpy()

    supervised = np.zeros(input_ids.shape, dtype=bool)
    dropped = []
    for i, row in enumerate(rows):
        supervised[i], last_image = _masks(offsets[i], spans[i], replacements[i], real[i])
        length = int(real[i].sum())
        if max_length is None or length <= max_length:
            continue
        if on_overflow == "drop":
            dropped.append(i)
        elif last_image >= max_length:
            raise VLMDataError(
                f"row {row}: {length} tokens, longer than max_length={max_length}, and cutting it there would cut "
                f"through its image tokens (they end at position {last_image}); raise max_length or set "
                "on_overflow: drop"
            )
        elif not supervised[i, 1:max_length].any():
            raise VLMDataError(
                f"row {row}: {length} tokens, longer than max_length={max_length}, and its answer starts after "
                "position max_length; raise max_length or set on_overflow: drop"
            )
    if dropped:
        kept = [example for i, example in enumerate(examples) if i not in dropped]
        logger.warning(
            "dropped row(s) %s: longer than max_length=%d tokens", [rows[i] for i in dropped], max_length or 0
        )
        if not kept:
            raise VLMDataError(
                f"every sample of a batch (rows {rows}) is longer than max_length={max_length}; raise max_length"
            )
        return default_collate_fn(kept, processor, max_length, on_overflow)

    for key in _TEXT_ONLY_OUTPUTS:
        batch.pop(key, None)
    width = input_ids.shape[1] if max_length is None else min(input_ids.shape[1], max_length)
    # Per-token inputs (input_ids, attention_mask, token_type_ids...) are cut to the batch width; image tensors
    # are left whole, since no image token is ever cut.
    for key, value in batch.items():
        per_token = torch.is_tensor(value) and value.shape[:2] == input_ids.shape and not key.startswith("pixel")
        if per_token:
            batch[key] = value[:, :width]
    input_ids = batch["input_ids"]
    targets = torch.from_numpy(supervised[:, :width])
    labels = torch.full_like(input_ids, -100)
    labels[:, :-1] = torch.where(targets[:, 1:], input_ids[:, 1:], -100)
    empty = [rows[i] for i in range(len(rows)) if not (labels[i] != -100).any()]
    if empty:
        raise VLMDataError(
            f"row(s) {empty} have no token that carries loss (an empty assistant turn?); fix or remove them"
        )
    batch["labels"] = labels
    not_tensors = [key for key, value in batch.items() if not torch.is_tensor(value)]
    assert not not_tensors, f"processor outputs that are not tensors reach the model: {not_tensors}"
    return batch


# Processor class name -> collate function. The default handles any processor with a chat template whose image
# placeholders it expands itself; register a family here when it needs something else.
COLLATE_FNS: dict[str, Callable[..., dict[str, torch.Tensor]]] = {
    "default": default_collate_fn,
}


def collate_fn_for(processor: Any) -> Callable[..., dict[str, torch.Tensor]]:
    """The collate function registered for ``type(processor).__name__`` in ``COLLATE_FNS``, else the default."""
    return COLLATE_FNS.get(type(processor).__name__, COLLATE_FNS["default"])
