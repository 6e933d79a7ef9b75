"""The question/answer prompt shared by SQuAD and column-mapped instruction data.

With a chat template: one user turn ``"Context: {context}\\nQuestion: {question}"`` (the context line is omitted when
absent) and one assistant turn holding the answer; loss on the assistant turn including its end-of-turn token.
Without one: ``"Context: {context} Question: {question} Answer:"`` + ``" {answer}"`` + EOS, with BOS first when the
tokenizer adds one by default; loss on the answer and the EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from automodel.components.datasets.llm._tokenize import (
    Span,
    default_prefix_ids,
    eos_id,
    render_conversation,
    tokenize_with_spans,
)


def user_prompt(context: str | None, question: str, *, chat: bool) -> str:
    separator = "\n" if chat else " "
    prompt = f"Context: {context}{separator}" if context else ""
    prompt += f"Question: {question}"
    return prompt if chat else prompt + " Answer:"


def tokenize_qa(
    tokenizer: Any,
    contexts: Sequence[str | None],
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    use_chat_template: bool,
    answer_only_loss_mask: bool,
    seq_length: int | None,
    on_overflow: str,
    name: str,
    where: str,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Build prompts, locate the answers and tokenize; rows must already be validated strings."""
    # Resolve the special tokens first so a tokenizer without EOS fails before any work.
    prepend: list[int] = [] if use_chat_template else default_prefix_ids(tokenizer)
    append: list[int] = [] if use_chat_template else [eos_id(tokenizer)]
    texts: list[str] = []
    spans: list[list[Span]] = []
    for row, (context, question, answer) in enumerate(zip(contexts, questions, answers, strict=True)):
        prompt = user_prompt(context, question, chat=use_chat_template)
        if use_chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            text, answer_spans = render_conversation(tokenizer, messages, row, where)
        else:
            # The space before the answer belongs to the answer's first token in BPE/SentencePiece vocabularies.
            text = f"{prompt} {answer}"
            answer_spans = [(len(prompt), len(text))]
        texts.append(text)
        spans.append(answer_spans if answer_only_loss_mask else [(0, len(text))])

    return tokenize_with_spans(
        tokenizer,
        texts,
        spans,
        prepend_ids=prepend,
        append_ids=append,
        seq_length=seq_length,
        on_overflow=on_overflow,
        name=name,
        where=where,
    )
