"""Datasets, collation, sampling and previews for fine-tuning.

Data contract: a dataset yields ``{"input_ids": list[int], "labels": list[int]}`` of equal length, labels already
shifted (``labels[t]`` is the token to predict at position ``t``, or -100 for no loss); ``default_collater`` pads a
batch and adds ``attention_mask``. ``pack_dataset`` + ``packed_collater`` pack several samples per row instead
(positions restart per document, no attention mask); ``ResumableSampler(group_by_length=True)`` cuts padding when
not packing.
"""

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm import (
    ColumnMappedTextInstructionDataset,
    SFTDataset,
    make_chat_dataset,
    make_squad_dataset,
)
from automodel.components.datasets.packing import PackedDataset, PackedSequenceConfig, pack_dataset, packed_collater
from automodel.components.datasets.preview import render_sample
from automodel.components.datasets.sampler import ResumableSampler
from automodel.components.datasets.utils import default_collater

__all__ = [
    "ColumnMappedTextInstructionDataset",
    "DatasetError",
    "PackedDataset",
    "ResumableSampler",
    "SFTDataset",
    "default_collater",
    "make_chat_dataset",
    "make_squad_dataset",
    "PackedSequenceConfig",
    "pack_dataset",
    "packed_collater",
    "render_sample",
]
