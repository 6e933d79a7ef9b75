"""OpenAI-style conversations (``messages``: list of ``{role, content}``), loss on every assistant turn."""

from __future__ import annotations

from typing import Any

from automodel.components.datasets._errors import DatasetError
from automodel.components.datasets.llm._io import load_rows, require_columns
from automodel.components.datasets.llm._tokenize import (
    OnOverflow,
    check_length_options,
    has_chat_template,
    render_conversation,
    tokenize_with_spans,
)
from automodel.components.datasets.llm.sft import SFTDataset

_ROLES = ("system", "user", "assistant", "tool")


def _content_text(content: Any, row: int, turn: int, where: str) -> str:
    """A string, or a list of ``{"type": "text", "text": ...}`` parts joined by newlines."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise DatasetError(
                    f"{where}: row {row}: message {turn} has a content part of type {kind!r}; only "
                    "{'type': 'text', 'text': ...} parts are supported for text models"
                )
            texts.append(part["text"])
        return "\n".join(texts)
    raise DatasetError(
        f"{where}: row {row}: message {turn} content must be a string or a list of text parts, got "
        f"{type(content).__name__}"
    )


def _normalize(conversation: Any, row: int, where: str) -> list[dict[str, str]]:
    if not isinstance(conversation, list) or not conversation:
        raise DatasetError(
            f"{where}: row {row}: messages must be a non-empty list of {{role, content}} dicts, got "
            f"{type(conversation).__name__}: {conversation!r:.80}"
        )
    messages = []
    for turn, message in enumerate(conversation):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DatasetError(
                f"{where}: row {row}: message {turn} must be a dict with 'role' and 'content', got {message!r:.80} "
                "(ShareGPT-style 'from'/'value' data must be converted to role/content)"
            )
        if message["role"] not in _ROLES:
            raise DatasetError(
                f"{where}: row {row}: message {turn} has role {message['role']!r}; expected one of {list(_ROLES)}"
            )
        messages.append({"role": message["role"], "content": _content_text(message["content"], row, turn, where)})
    if messages[-1]["role"] != "assistant":
        raise DatasetError(
            f"{where}: row {row}: the last message is from {messages[-1]['role']!r}; a training conversation must "
            "end with an assistant message (there is nothing to learn after it)"
        )
    return messages


def make_chat_dataset(
    tokenizer: Any,
    path_or_dataset_id: Any,
    split: str = "train",
    messages_column: str = "messages",
    seq_length: int | None = None,
    on_overflow: OnOverflow = "truncate",
    limit_dataset_samples: int | None = None,
) -> SFTDataset:
    """Tokenize conversations with the tokenizer's chat template; loss on all assistant turns and their end-of-turn.

    Args:
        tokenizer: a fast Hugging Face tokenizer with a chat template (``tokenizer.chat_template``).
        path_or_dataset_id: a Hub id, a local ``.json``/``.jsonl``/``.parquet`` file (or a list of them), or a
            directory with files named by split (``train.jsonl``, ``validation.jsonl``).
        split: split name with an optional HF slice: ``train``, ``train[:200]``, ``train[:90%]``, ``train[95%:]``.
        messages_column: the column holding the list of ``{role, content}`` messages (roles system, user,
            assistant, tool; content a string or a list of ``{"type": "text", "text": ...}`` parts).
        seq_length: maximum tokens of a full sequence; ``None`` for no limit.
        on_overflow: ``truncate`` cuts long sequences at the end, ``drop`` removes them.
        limit_dataset_samples: keep only the first N rows (after the split slice).

    The newline the template puts after an end-of-turn token carries no loss; system, user and tool turns carry none.
    """
    check_length_options(seq_length, on_overflow)
    if not has_chat_template(tokenizer):
        raise DatasetError(
            "make_chat_dataset needs a tokenizer with a chat template; use an instruct/chat model's tokenizer or set "
            "tokenizer.chat_template"
        )
    rows, where = load_rows(path_or_dataset_id, split, limit=limit_dataset_samples)
    require_columns(rows, {"messages_column": messages_column}, where, "set messages_column to the right column")

    texts, spans = [], []
    for row, conversation in enumerate(rows[messages_column]):
        text, assistant_spans = render_conversation(tokenizer, _normalize(conversation, row, where), row, where)
        texts.append(text)
        spans.append(assistant_spans)
    input_ids, labels = tokenize_with_spans(
        tokenizer, texts, spans, seq_length=seq_length, on_overflow=on_overflow, name=f"chat {split}", where=where
    )
    return SFTDataset(input_ids, labels)
