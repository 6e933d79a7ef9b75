"""LLM datasets: SQuAD-style QA, column-mapped instruction data and chat conversations, all tokenized to
``{"input_ids", "labels"}`` with labels already shifted."""

from automodel.components.datasets.llm.chat import make_chat_dataset
from automodel.components.datasets.llm.column_mapped_text_instruction_dataset import ColumnMappedTextInstructionDataset
from automodel.components.datasets.llm.sft import SFTDataset
from automodel.components.datasets.llm.squad import make_squad_dataset

__all__ = ["ColumnMappedTextInstructionDataset", "SFTDataset", "make_chat_dataset", "make_squad_dataset"]
