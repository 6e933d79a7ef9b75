"""Vision-language datasets and collate functions.

Datasets yield ``{"conversation": messages, "row": int}`` with images decoded on access; the collate function
applies the processor (chat template, image preprocessing, image-token expansion) and builds shifted ``labels``
with the loss on assistant turns only. Module names follow the reference system's
(``components.datasets.vlm.datasets.make_cord_v2_dataset``, ``components.datasets.vlm.collate_fns.default_collate_fn``).
"""

from automodel.components.datasets.vlm._conversation import VLMConversationDataset, normalize_messages
from automodel.components.datasets.vlm._images import ImageLoadError, VLMDataError, load_image
from automodel.components.datasets.vlm.collate_fns import COLLATE_FNS, collate_fn_for, default_collate_fn
from automodel.components.datasets.vlm.datasets import (
    json_to_tokens,
    make_conversation_dataset,
    make_cord_v2_dataset,
    make_image_qa_dataset,
    make_medpix_dataset,
    make_rdr_dataset,
)
from automodel.components.datasets.vlm.preview import render_vlm_batch

__all__ = [
    "COLLATE_FNS",
    "ImageLoadError",
    "VLMConversationDataset",
    "VLMDataError",
    "collate_fn_for",
    "default_collate_fn",
    "json_to_tokens",
    "load_image",
    "make_conversation_dataset",
    "make_cord_v2_dataset",
    "make_image_qa_dataset",
    "make_medpix_dataset",
    "make_rdr_dataset",
    "normalize_messages",
    "render_vlm_batch",
]
