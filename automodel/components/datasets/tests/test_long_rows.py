"""A row far longer than seq_length is tokenized from a prefix only, with the same samples as a full tokenization."""

import numpy as np
import pytest

from automodel.components.datasets import DatasetError, make_chat_dataset, make_squad_dataset
from automodel.components.datasets.llm import _tokenize
from automodel.components.datasets.llm._tokenize import tokenize_with_spans
from automodel.components.datasets.tests.conftest import squad_row, write_jsonl

SENTENCE = "Ada Morvane was a clockmaker born in Kelmsford in 1874. "


def tokenize(tokenizer, texts, spans, seq_length, on_overflow="truncate", **kwargs):
    return tokenize_with_spans(
        tokenizer, texts, spans, seq_length=seq_length, on_overflow=on_overflow, name="t", where="w", **kwargs
    )


@pytest.mark.parametrize("supervise", ["all", "end"], ids=["loss_everywhere", "loss_on_the_tail"])
def test_a_cut_row_gives_the_samples_of_a_full_tokenization(plain_tokenizer, supervise):
    text = SENTENCE * 400  # ~22k characters: longer than (64 + margin) x 32, so only a prefix is tokenized
    assert len(text) > (64 + _tokenize._CUT_MARGIN) * _tokenize._CHARS_PER_TOKEN
    spans = [[(0, len(text))]] if supervise == "all" else [[(100, len(text))]]
    eos = plain_tokenizer.eos_token_id
    cut_ids, cut_labels = tokenize(plain_tokenizer, [text], spans, seq_length=64, append_ids=[eos])
    full_ids, full_labels = tokenize(plain_tokenizer, [text], spans, seq_length=None, append_ids=[eos])
    assert len(cut_ids[0]) == 63  # seq_length tokens, shifted
    np.testing.assert_array_equal(cut_ids[0], full_ids[0][:63])
    np.testing.assert_array_equal(cut_labels[0], full_labels[0][:63])


def test_a_prefix_with_too_few_tokens_falls_back_to_the_full_text(plain_tokenizer, monkeypatch):
    monkeypatch.setattr(
        _tokenize, "_CHARS_PER_TOKEN", 1
    )  # a prefix of ~ seq_length + margin characters: too few tokens
    text = SENTENCE * 40
    ids, labels = tokenize(plain_tokenizer, [text], [[(0, len(text))]], seq_length=64)
    full_ids, full_labels = tokenize(plain_tokenizer, [text], [[(0, len(text))]], seq_length=None)
    np.testing.assert_array_equal(ids[0], full_ids[0][:63])
    np.testing.assert_array_equal(labels[0], full_labels[0][:63])


class RecordingTokenizer:
    """The chat tokenizer, recording the longest text it was asked to tokenize."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)

    def __call__(self, text, **kwargs):
        texts = [text] if isinstance(text, str) else text
        self.longest = max([self.longest, *(len(t) for t in texts)])
        return self._tokenizer(text, **kwargs)


def test_a_10_mb_row_is_cut_not_tokenized_whole(chat_tokenizer, tmp_path):
    huge = SENTENCE * (10_000_000 // len(SENTENCE))
    rows = [
        {"messages": [{"role": "user", "content": "Tell me all."}, {"role": "assistant", "content": huge}]},
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]},
    ]
    path = write_jsonl(tmp_path / "chat.jsonl", rows)
    tokenizer = RecordingTokenizer(chat_tokenizer)
    dataset = make_chat_dataset(tokenizer, str(path), seq_length=256)
    assert dataset.lengths[0] == 255 and dataset.lengths[1] < 30
    # A whole 10 MB row costs seconds and GBs of offsets; only a prefix of (256 + margin) x 32 characters is read.
    assert tokenizer.longest == (256 + _tokenize._CUT_MARGIN) * _tokenize._CHARS_PER_TOKEN


def test_a_10_mb_prompt_is_dropped_or_named(chat_tokenizer, tmp_path):
    rows = [squad_row(0, context=SENTENCE * (10_000_000 // len(SENTENCE)) + "Paris.", answer="Paris")]
    rows += [squad_row(i) for i in range(1, 4)]
    path = str(write_jsonl(tmp_path / "squad.jsonl", rows))
    dataset = make_squad_dataset(chat_tokenizer, path, seq_length=128, on_overflow="drop")
    assert len(dataset) == 3 and max(dataset.lengths) < 128
    with pytest.raises(DatasetError, match=r"row 0: the prompt alone is at least 128 tokens.*on_overflow: drop"):
        make_squad_dataset(chat_tokenizer, path, seq_length=128)


def test_a_cut_row_with_an_empty_answer_is_still_an_error(chat_tokenizer):
    text = SENTENCE * 400
    with pytest.raises(DatasetError, match="row 0 has no token that carries loss"):
        tokenize(chat_tokenizer, [text], [[(len(text), len(text))]], seq_length=64)
