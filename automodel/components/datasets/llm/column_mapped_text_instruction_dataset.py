"""Instruction data in any schema: map the roles ``context``, ``question``, ``answer`` to the file's column names."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm._io import load_rows, require_columns
from automodel.components.datasets.llm._qa import tokenize_qa
from automodel.components.datasets.llm._tokenize import OnOverflow, check_length_options, resolve_use_chat_template
from automodel.components.datasets.llm.sft import SFTDataset

_ROLES = ("context", "question", "answer")
_REQUIRED_ROLES = ("question", "answer")


def _check_column_mapping(column_mapping: Any) -> dict[str, str]:
    if not isinstance(column_mapping, Mapping):
        raise DatasetError(
            f"column_mapping must map roles to column names, e.g. {{question: instruction, context: input, answer: "
            f"output}}, got {type(column_mapping).__name__}"
        )
    unknown = sorted(set(column_mapping) - set(_ROLES))
    if unknown:
        raise DatasetError(f"column_mapping has unknown role(s) {unknown}; the roles are {list(_ROLES)}")
    missing = [role for role in _REQUIRED_ROLES if not column_mapping.get(role)]
    if missing:
        raise DatasetError(
            f"column_mapping needs the role(s) {missing}; e.g. {{question: instruction, answer: output}} "
            "(context is optional)"
        )
    return {role: str(column_mapping[role]) for role in _ROLES if column_mapping.get(role)}


def _check_reference_options(padding: Any, truncation: Any, seq_length: int | None, on_overflow: str) -> None:
    """NeMo Automodel's `padding` / `truncation` keys mean the same as ours or are refused by name."""
    if padding not in ("do_not_pad", False, "longest"):  # "longest" of one sample pads nothing
        raise DatasetError(
            f"padding={padding!r}: samples are not padded one by one here (the collater pads each batch to its "
            "longest sample); remove padding or set do_not_pad"
        )
    if truncation in (None, "longest_first", "only_first", True):
        if truncation is not None and on_overflow != "truncate":
            raise DatasetError(f"truncation={truncation!r} and on_overflow={on_overflow!r} disagree; keep one")
        return
    if truncation in ("do_not_truncate", False):
        if seq_length is not None:
            raise DatasetError(
                f"truncation={truncation!r} keeps samples longer than seq_length={seq_length}, but seq_length "
                "always limits the length here; remove seq_length (no limit) or remove truncation (cut at the end)"
            )
        return
    raise DatasetError(
        f"truncation={truncation!r} is not supported; use longest_first (cut at the end), do_not_truncate, or "
        "remove it and set on_overflow: truncate | drop"
    )


class ColumnMappedTextInstructionDataset(SFTDataset):
    """Tokenized instruction/answer rows from any schema, with the same prompt rules as ``make_squad_dataset``.

    Args:
        path_or_dataset_id: a Hub id, a local ``.json``/``.jsonl``/``.parquet``/``.csv`` file (or a list of them),
            or a directory with files named by split (``train.jsonl``, ``validation.jsonl``).
        column_mapping: ``{question: <col>, answer: <col>, context: <col>}``; ``context`` is optional and a row
            whose context is empty or null gets a prompt without it.
        tokenizer: a fast Hugging Face tokenizer.
        split: split name with an optional HF slice: ``train``, ``train[:200]``, ``train[:90%]``, ``train[95%:]``.
        answer_only_loss_mask: ``True`` puts the loss on the answer (and its end-of-turn token / EOS) only;
            ``False`` on every token.
        seq_length: maximum tokens of a full sequence; ``None`` for no limit.
        use_chat_template: ``None`` uses the tokenizer's chat template when it has one.
        on_overflow: ``truncate`` cuts long sequences at the end, ``drop`` removes them.
        limit_dataset_samples: keep only the first N rows (after the split slice).
        use_hf_chat_template: NeMo Automodel's name for ``use_chat_template``; either may be given.
        padding, truncation: NeMo Automodel's tokenizer options, for its configs. Samples are never padded here
            (the collater pads each batch), so ``padding`` may only say ``do_not_pad``; ``truncation`` may be a
            truncating strategy (``longest_first``, ``only_first``, ``true``: the same as ``on_overflow:
            truncate``) or ``do_not_truncate`` / ``false`` without a ``seq_length``.
    """

    def __init__(
        self,
        path_or_dataset_id: Any,
        column_mapping: Mapping[str, str],
        tokenizer: Any,
        split: str = "train",
        answer_only_loss_mask: bool = True,
        seq_length: int | None = None,
        use_chat_template: bool | None = None,
        on_overflow: OnOverflow = "truncate",
        limit_dataset_samples: int | None = None,
        use_hf_chat_template: bool | None = None,
        padding: Literal["do_not_pad", "longest", False] = "do_not_pad",
        truncation: Literal["longest_first", "only_first", "do_not_truncate", True, False] | None = None,
    ) -> None:
        _check_reference_options(padding, truncation, seq_length, on_overflow)
        if use_hf_chat_template is not None:
            if use_chat_template is not None and use_chat_template != use_hf_chat_template:
                raise DatasetError(
                    f"use_chat_template={use_chat_template} and use_hf_chat_template={use_hf_chat_template} "
                    "disagree; set only use_chat_template"
                )
            use_chat_template = use_hf_chat_template
        mapping = _check_column_mapping(column_mapping)
        check_length_options(seq_length, on_overflow)
        chat = resolve_use_chat_template(tokenizer, use_chat_template)
        rows, where = load_rows(path_or_dataset_id, split, limit=limit_dataset_samples)
        require_columns(
            rows,
            {f"column_mapping.{role}": column for role, column in mapping.items()},
            where,
            "point column_mapping at the right columns",
        )

        def column(role: str) -> list[Any]:
            return list(rows[mapping[role]]) if role in mapping else [None] * len(rows)

        contexts, questions, answers = column("context"), column("question"), column("answer")
        for row, (context, question, answer) in enumerate(zip(contexts, questions, answers, strict=True)):
            for role, value, optional in (
                ("context", context, True),
                ("question", question, False),
                ("answer", answer, False),
            ):
                if not (isinstance(value, str) or (optional and value is None)):
                    raise DatasetError(
                        f"{where}: row {row}: column {mapping[role]!r} ({role}) must be a string, got "
                        f"{type(value).__name__}: {value!r:.80}"
                    )
            if not answer.strip():
                raise DatasetError(
                    f"{where}: row {row} has an empty answer (column {mapping['answer']!r}); fix or remove that row"
                )

        input_ids, labels = tokenize_qa(
            tokenizer,
            contexts,
            questions,
            answers,
            use_chat_template=chat,
            answer_only_loss_mask=answer_only_loss_mask,
            seq_length=seq_length,
            on_overflow=on_overflow,
            name=f"column-mapped {split}",
            where=where,
        )
        super().__init__(input_ids, labels)
