"""SQuAD-style extractive QA (``context``, ``question``, ``answers``) for supervised fine-tuning."""

from __future__ import annotations

import logging
from typing import Any

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm._io import load_rows, require_columns
from automodel.components.datasets.llm._qa import tokenize_qa
from automodel.components.datasets.llm._tokenize import OnOverflow, check_length_options, resolve_use_chat_template
from automodel.components.datasets.llm.sft import SFTDataset

logger = logging.getLogger(__name__)

_COLUMNS = {"context": "context", "question": "question", "answers": "answers"}


def _first_answer(answers: Any, row: int, where: str) -> str:
    """The target: the first answer text. Accepts the HF dict, a plain string or a list of strings."""
    texts = answers.get("text") if isinstance(answers, dict) else answers
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not all(isinstance(t, str) for t in texts):
        raise DatasetError(
            f"{where}: row {row}: 'answers' must be {{'text': [...], 'answer_start': [...]}}, a string or a list of "
            f"strings, got {type(answers).__name__}: {str(answers)[:80]!r}"
        )
    if not texts or not texts[0].strip():
        raise DatasetError(
            f"{where}: row {row} has no answer text (an unanswerable SQuAD v2 question?); fix or filter out that row"
        )
    return texts[0]


def make_squad_dataset(
    tokenizer: Any,
    dataset_name: Any = "rajpurkar/squad",
    split: str = "train",
    seq_length: int | None = None,
    limit_dataset_samples: int | None = None,
    use_chat_template: bool | None = None,
    on_overflow: OnOverflow = "truncate",
    start_of_turn_token: str | None = None,
    fp8: bool = False,
) -> SFTDataset:
    """Tokenize SQuAD-format QA rows into ``{"input_ids", "labels"}`` samples (labels shifted, loss on the answer).

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        dataset_name: a Hub id (``rajpurkar/squad``), a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file, or a
            directory with files named by split (``train.jsonl``, ``validation.jsonl``).
        split: split name with an optional HF slice: ``train``, ``train[:200]``, ``train[:90%]``, ``train[95%:]``
            (slices also work on a single local file, which is how a validation part is carved from it).
        seq_length: maximum tokens of a full sequence; ``None`` for no limit.
        limit_dataset_samples: keep only the first N rows (after the split slice).
        use_chat_template: ``None`` uses the tokenizer's chat template when it has one. With it, the user turn is
            ``"Context: ...\\nQuestion: ..."`` and the loss covers the assistant turn and its end-of-turn token;
            without it the text is ``"Context: ... Question: ... Answer: <answer><eos>"``, loss on answer and EOS.
        on_overflow: ``truncate`` cuts long sequences at the end, ``drop`` removes them.
        start_of_turn_token, fp8: accepted for NeMo Automodel configs; unused (answers are located by rendering the
            template, and padding multiples belong to the collater's ``pad_seq_len_divisible``).

    Each row's target is its first answer text; ``answers`` may be the HF dict, a string or a list of strings.
    """
    if start_of_turn_token is not None:
        logger.warning("make_squad_dataset: start_of_turn_token is ignored; answers are found from the chat template")
    if fp8:
        logger.warning("make_squad_dataset: fp8 is ignored; set the collater's pad_seq_len_divisible (e.g. 16)")
    check_length_options(seq_length, on_overflow)
    chat = resolve_use_chat_template(tokenizer, use_chat_template)
    rows, where = load_rows(dataset_name, split, limit=limit_dataset_samples)
    require_columns(rows, _COLUMNS, where, "SQuAD data needs the columns context, question and answers")

    contexts, questions, answers = [], [], []
    for row, (context, question, answer) in enumerate(zip(rows["context"], rows["question"], rows["answers"])):
        for column, value in (("context", context), ("question", question)):
            if not isinstance(value, str):
                raise DatasetError(
                    f"{where}: row {row}: {column!r} must be a string, got {type(value).__name__}: {value!r:.80}"
                )
        contexts.append(context)
        questions.append(question)
        answers.append(_first_answer(answer, row, where))

    input_ids, labels = tokenize_qa(
        tokenizer,
        contexts,
        questions,
        answers,
        use_chat_template=chat,
        answer_only_loss_mask=True,
        seq_length=seq_length,
        on_overflow=on_overflow,
        name=f"squad {split}",
        where=where,
    )
    return SFTDataset(input_ids, labels)
