"""SQuAD formatting checked token by token: shifted labels, prompt masked, answer and end-of-turn supervised."""

import logging

import pytest

from automodel.components.datasets import DatasetError, make_squad_dataset
from automodel.components.datasets.tests.conftest import squad_row, supervised_targets, write_jsonl

CONTEXT = "The Tavel river rises in the Orm hills."
ANSWER = "the Orm hills"


@pytest.fixture
def squad_file(tmp_path):
    return str(write_jsonl(tmp_path / "squad.jsonl", [squad_row(i) for i in range(3)]))


def assert_shifted(sample, full_ids):
    """input_ids is the sequence minus its last token; every label is the next token or -100."""
    assert sample["input_ids"] == full_ids[:-1]
    assert len(sample["labels"]) == len(sample["input_ids"])
    for t, label in enumerate(sample["labels"]):
        assert label in (-100, full_ids[t + 1])


def test_chat_template_masks_prompt_and_supervises_answer_and_end_of_turn(chat_tokenizer, squad_file):
    ds = make_squad_dataset(chat_tokenizer, squad_file)
    assert len(ds) == 3
    sample = ds[0]
    user = f"Context: {CONTEXT}\nQuestion: Where does river 0 rise?"
    prompt = f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    full_ids = chat_tokenizer(prompt + ANSWER + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert_shifted(sample, full_ids)

    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    answer_ids = chat_tokenizer(ANSWER, add_special_tokens=False)["input_ids"]
    assert supervised_targets(sample) == answer_ids + [im_end]
    num_prompt = len(chat_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    # Position t predicts token t + 1: prompt tokens are never targets, the trailing "\n" after <|im_end|> neither.
    assert all(label == -100 for label in sample["labels"][: num_prompt - 1])
    assert all(label != -100 for label in sample["labels"][num_prompt - 1 : -1])
    assert sample["labels"][-1] == -100 and chat_tokenizer.decode([full_ids[-1]]) == "\n"
    assert ds.lengths == [len(ds[i]["input_ids"]) for i in range(3)]


def test_without_chat_template_adds_bos_and_supervises_answer_and_eos(plain_tokenizer, squad_file):
    sample = make_squad_dataset(plain_tokenizer, squad_file)[1]
    prompt = f"Context: {CONTEXT} Question: Where does river 1 rise? Answer:"
    bos, eos = plain_tokenizer.bos_token_id, plain_tokenizer.eos_token_id
    full_ids = [bos] + plain_tokenizer(f"{prompt} {ANSWER}", add_special_tokens=False)["input_ids"] + [eos]
    assert_shifted(sample, full_ids)
    targets = supervised_targets(sample)
    assert plain_tokenizer.decode(targets) == f" {ANSWER}</s>"
    assert sample["labels"][-1] == eos
    num_prompt = 1 + len(plain_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert sample["labels"][: num_prompt - 1] == [-100] * (num_prompt - 1)
    assert full_ids.count(bos) == 1 and full_ids.count(eos) == 1  # no special tokens in the middle


def test_chat_tokenizer_can_opt_out_of_the_template(chat_tokenizer, squad_file):
    sample = make_squad_dataset(chat_tokenizer, squad_file, use_chat_template=False)[0]
    assert chat_tokenizer.decode(sample["input_ids"]).startswith("Context: ")  # no BOS: this tokenizer adds none
    assert chat_tokenizer.decode(supervised_targets(sample)) == f" {ANSWER}<|im_end|>"


def test_forcing_a_missing_chat_template_is_an_error(plain_tokenizer, squad_file):
    with pytest.raises(DatasetError, match="the tokenizer has no chat template"):
        make_squad_dataset(plain_tokenizer, squad_file, use_chat_template=True)


@pytest.mark.parametrize("answers", ["the Orm hills", ["the Orm hills", "Orm hills"]])
def test_answers_as_string_or_list(tmp_path, plain_tokenizer, answers):
    rows = [{**squad_row(0), "answers": answers}]
    sample = make_squad_dataset(plain_tokenizer, str(write_jsonl(tmp_path / "d.jsonl", rows)))[0]
    assert plain_tokenizer.decode(supervised_targets(sample)) == f" {ANSWER}</s>"


@pytest.mark.parametrize("texts", [[""], []])
def test_row_without_answer_text_is_an_error(tmp_path, plain_tokenizer, texts):
    rows = [squad_row(0), {**squad_row(1), "answers": {"text": texts, "answer_start": [0] * len(texts)}}]
    with pytest.raises(DatasetError, match="row 1 has no answer text"):
        make_squad_dataset(plain_tokenizer, str(write_jsonl(tmp_path / "d.jsonl", rows)))


@pytest.fixture
def mixed_length_file(tmp_path):
    long_answer = " ".join([ANSWER] * 6)
    rows = [squad_row(0), squad_row(1), squad_row(2, answer=long_answer), squad_row(3, answer=long_answer)]
    return str(write_jsonl(tmp_path / "mixed.jsonl", rows))


def test_truncate_cuts_long_rows_and_drop_removes_them(plain_tokenizer, mixed_length_file, caplog):
    full_lengths = [n + 1 for n in make_squad_dataset(plain_tokenizer, mixed_length_file).lengths]
    assert full_lengths[0] == full_lengths[1] < full_lengths[2]
    seq_length = full_lengths[0] + 2

    with caplog.at_level(logging.INFO):
        truncated = make_squad_dataset(plain_tokenizer, mixed_length_file, seq_length=seq_length)
    assert truncated.lengths == [full_lengths[0] - 1] * 2 + [seq_length - 1] * 2
    assert f"squad train: 4 samples, 2 truncated, 0 dropped, max length {seq_length}" in caplog.text
    # The cut answer keeps its first tokens supervised; the EOS is gone.
    assert plain_tokenizer.eos_token_id not in supervised_targets(truncated[2])

    caplog.clear()
    with caplog.at_level(logging.INFO):
        dropped = make_squad_dataset(plain_tokenizer, mixed_length_file, seq_length=seq_length, on_overflow="drop")
    assert len(dropped) == 2 and dropped[0] == truncated[0]
    assert "squad train: 2 samples, 0 truncated, 2 dropped" in caplog.text


def test_prompt_longer_than_seq_length_is_an_error(plain_tokenizer, mixed_length_file):
    with pytest.raises(DatasetError, match=r"row 0: the prompt alone is \d+ tokens, .*seq_length=8; raise seq_length"):
        make_squad_dataset(plain_tokenizer, mixed_length_file, seq_length=8)
    with pytest.raises(DatasetError, match="all 4 rows are longer than seq_length=8"):
        make_squad_dataset(plain_tokenizer, mixed_length_file, seq_length=8, on_overflow="drop")


def test_bad_length_options_are_errors(plain_tokenizer, squad_file):
    with pytest.raises(DatasetError, match=r"on_overflow must be one of \['truncate', 'drop'\], got 'cut'"):
        make_squad_dataset(plain_tokenizer, squad_file, on_overflow="cut")
    with pytest.raises(DatasetError, match="seq_length must be an integer >= 2"):
        make_squad_dataset(plain_tokenizer, squad_file, seq_length=0)


def test_limit_dataset_samples(plain_tokenizer, squad_file):
    assert len(make_squad_dataset(plain_tokenizer, squad_file, limit_dataset_samples=2)) == 2
