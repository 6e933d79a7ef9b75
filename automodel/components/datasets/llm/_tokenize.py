"""Texts with supervised character spans -> shifted ``input_ids`` / ``labels``, with one length policy for all formats.

Every format (SQuAD, column-mapped, chat) reduces a row to a text plus the character spans that carry loss. The text
is tokenized once with offsets, a token is supervised when its characters overlap a span, and the sequence is cut or
dropped at ``seq_length``. Labels are then shifted: ``labels[t] = ids[t + 1]`` when token ``t + 1`` is supervised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from automodel.components.datasets._errors import DatasetError

logger = logging.getLogger(__name__)

OnOverflow = Literal["truncate", "drop"]  # a type too, so `validate` catches a typo before anything loads
ON_OVERFLOW_CHOICES: tuple[str, ...] = get_args(OnOverflow)
_TOKENIZE_CHUNK = 1000  # rows per batched tokenizer call: fast, and bounded memory for offsets
# A text longer than (seq_length + _CUT_MARGIN) x _CHARS_PER_TOKEN characters is tokenized from that prefix only:
# only its first seq_length tokens can be kept, and a 10 MB row would otherwise cost seconds and GBs of offsets.
# Tokenization is local, so the prefix's tokens are the full text's except the last few before the cut; a prefix that
# does not yield _CUT_MARGIN tokens more than seq_length (unusually long tokens) is tokenized in full instead.
_CHARS_PER_TOKEN = 32
_CUT_MARGIN = 32

Span = tuple[int, int]


def check_length_options(seq_length: int | None, on_overflow: str) -> None:
    if on_overflow not in ON_OVERFLOW_CHOICES:
        raise DatasetError(f"on_overflow must be one of {list(ON_OVERFLOW_CHOICES)}, got {on_overflow!r}")
    if seq_length is not None and (isinstance(seq_length, bool) or not isinstance(seq_length, int) or seq_length < 2):
        raise DatasetError(f"seq_length must be an integer >= 2 or null (no limit), got {seq_length!r}")


def require_fast_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise DatasetError(
            f"the tokenizer ({type(tokenizer).__name__}) is not a fast tokenizer; loss masking needs character "
            "offsets: load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_use_chat_template(tokenizer: Any, use_chat_template: bool | None) -> bool:
    """``None`` means: use the chat template iff the tokenizer has one."""
    if use_chat_template is None:
        return has_chat_template(tokenizer)
    if use_chat_template and not has_chat_template(tokenizer):
        raise DatasetError(
            "use_chat_template is true but the tokenizer has no chat template; use a tokenizer with one (an "
            "instruct model's), set tokenizer.chat_template, or set use_chat_template: false"
        )
    return bool(use_chat_template)


def default_prefix_ids(tokenizer: Any) -> list[int]:
    """The BOS id when ``tokenizer(text)`` adds one by default (respects ``add_bos_token``), else nothing."""
    bos = getattr(tokenizer, "bos_token_id", None)
    with_special = tokenizer("a")["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    if bos is not None and len(with_special) > len(without) and with_special[0] == bos:
        return [bos]
    return []


def eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DatasetError(
            "the tokenizer has no eos_token, which the answer must end with so the model learns to stop; set "
            "tokenizer.eos_token or use a tokenizer with a chat template"
        )
    return int(eos)


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool, where: str, row: int) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises TemplateError (e.g. "roles must alternate"): a problem with the row
        raise DatasetError(f"{where}: row {row}: the chat template failed: {' '.join(str(exc).split())}") from exc
    assert isinstance(text, str), "apply_chat_template(tokenize=False) returns a string"
    return text


def render_conversation(tokenizer: Any, messages: list[dict[str, str]], row: int, where: str) -> tuple[str, list[Span]]:
    """Render ``messages`` with the chat template; return the text and each assistant turn's character span.

    A turn starts after the generation prompt (``render(messages[:i], add_generation_prompt=True)``) and ends where
    ``render(messages[:i + 1])`` ends, minus trailing whitespace: the end-of-turn token carries loss, the newline
    after it does not. This needs a prefix-stable template (rendering a prefix of the conversation gives a prefix of
    the text).
    """
    full = _render(tokenizer, messages, False, where, row)
    spans: list[Span] = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, where, row) if i else ""
        through = full if i == len(messages) - 1 else _render(tokenizer, messages[: i + 1], False, where, row)
        if not (full.startswith(before) and full.startswith(through) and len(before) <= len(through)):
            raise DatasetError(
                f"{where}: row {row}: the chat template is not prefix-stable (rendering the first {i} messages does "
                "not give a prefix of the whole conversation, e.g. it rewrites earlier turns), so the assistant "
                "turns cannot be located; use a tokenizer whose template renders turns independently"
            )
        start = len(before)
        end = start + len(full[start : len(through)].rstrip())
        spans.append((start, end))
    return full, spans


def _supervised_mask(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> np.ndarray:
    offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    mask = np.zeros(len(offs), dtype=bool)
    for start, end in spans:
        mask |= (offs[:, 0] < end) & (offs[:, 1] > start)
    return mask


def tokenize_with_spans(
    tokenizer: Any,
    texts: Sequence[str],
    spans: Sequence[Sequence[Span]],
    *,
    prepend_ids: Sequence[int] = (),
    append_ids: Sequence[int] = (),
    seq_length: int | None,
    on_overflow: OnOverflow,
    name: str,
    where: str,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tokenize ``texts`` (no special tokens added), mark tokens overlapping ``spans``, apply the length policy.

    ``prepend_ids`` (e.g. BOS) carry no loss; ``append_ids`` (e.g. EOS) carry loss. Row numbers in errors are the
    positions in ``texts``, i.e. the rows of the loaded split. Returns the per-sample ``input_ids`` and ``labels``.
    """
    check_length_options(seq_length, on_overflow)
    require_fast_tokenizer(tokenizer)
    prefix = np.asarray(prepend_ids, dtype=np.int64)
    suffix = np.asarray(append_ids, dtype=np.int64)
    all_input_ids: list[np.ndarray] = []
    all_labels: list[np.ndarray] = []
    num_truncated = num_dropped = max_length = 0

    max_chars = None if seq_length is None else (seq_length + _CUT_MARGIN) * _CHARS_PER_TOKEN

    for chunk_start in range(0, len(texts), _TOKENIZE_CHUNK):
        chunk = list(texts[chunk_start : chunk_start + _TOKENIZE_CHUNK])
        cut = [max_chars is not None and len(text) > max_chars for text in chunk]
        encoded = tokenizer(
            [text[:max_chars] if was_cut else text for text, was_cut in zip(chunk, cut)],
            add_special_tokens=False,
            return_offsets_mapping=True,
        )
        for k, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)):
            row = chunk_start + k
            # `cut`: only a prefix was tokenized, and it already holds more than seq_length tokens.
            if cut[k] and len(ids) <= (seq_length or 0) + _CUT_MARGIN:
                full = tokenizer(chunk[k], add_special_tokens=False, return_offsets_mapping=True)
                ids, offsets, cut[k] = full["input_ids"], full["offset_mapping"], False
            tail = np.zeros(0, dtype=np.int64) if cut[k] else suffix  # an EOS after the cut would be cut off anyway
            ids = np.concatenate([prefix, np.asarray(ids, dtype=np.int64), tail])
            supervised = np.concatenate(
                [np.zeros(len(prefix), bool), _supervised_mask(offsets, spans[row]), np.ones(len(tail), bool)]
            )
            # Token 0 is never predicted, so only positions >= 1 can carry loss.
            hits = np.flatnonzero(supervised[1:])
            if len(hits) == 0 and not (cut[k] and any(end > start for start, end in spans[row])):
                raise DatasetError(
                    f"{where}: row {row} has no token that carries loss (empty answer or assistant turn?); fix or "
                    "remove that row"
                )
            first_supervised = int(hits[0]) + 1 if len(hits) else len(ids)
            if seq_length is not None and len(ids) > seq_length:
                if on_overflow == "drop":
                    num_dropped += 1
                    continue
                if first_supervised >= seq_length:
                    prompt = f"at least {seq_length}" if cut[k] else str(first_supervised)
                    raise DatasetError(
                        f"{where}: row {row}: the prompt alone is {prompt} tokens, which leaves no answer "
                        f"token within seq_length={seq_length}; raise seq_length or set on_overflow: drop"
                    )
                ids, supervised = ids[:seq_length], supervised[:seq_length]
                num_truncated += 1
            max_length = max(max_length, len(ids))
            # int32 halves the memory of a large dataset; vocabularies are far below 2**31.
            all_input_ids.append(ids[:-1].astype(np.int32))
            all_labels.append(np.where(supervised[1:], ids[1:], -100).astype(np.int32))

    if not all_input_ids:
        raise DatasetError(
            f"{where}: all {num_dropped} rows are longer than seq_length={seq_length} and were dropped; raise "
            "seq_length or use on_overflow: truncate"
        )
    logger.info(
        "%s: %d samples, %d truncated, %d dropped, max length %d",
        name,
        len(all_input_ids),
        num_truncated,
        num_dropped,
        max_length,
    )
    return all_input_ids, all_labels
