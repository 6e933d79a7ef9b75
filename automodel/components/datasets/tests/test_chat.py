"""Chat data: every assistant turn (with its end-of-turn token) carries loss, nothing else does."""

import copy

import pytest

from automodel.components.datasets import DatasetError, make_chat_dataset
from automodel.components.datasets.tests.conftest import supervised_targets, write_jsonl

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello there, how are you?"},
    {"role": "assistant", "content": "I am fine, thank you."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
]


def chat_file(tmp_path, conversations, name="chat.jsonl"):
    return str(write_jsonl(tmp_path / name, [{"messages": m} for m in conversations]))


def test_multi_turn_supervises_every_assistant_turn_and_nothing_else(tmp_path, chat_tokenizer):
    sample = make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [CONVERSATION]))[0]
    full_text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in CONVERSATION)
    full_ids = chat_tokenizer(full_text, add_special_tokens=False)["input_ids"]
    assert sample["input_ids"] == full_ids[:-1]

    # Walk the sequence token by token: a target carries loss iff it lies inside an assistant reply or is the
    # <|im_end|> closing it; the "\n" after <|im_end|> and every system/user/header token carry none.
    im_end = chat_tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected = []
    for message in CONVERSATION:
        header = chat_tokenizer(f"<|im_start|>{message['role']}\n", add_special_tokens=False)["input_ids"]
        body = chat_tokenizer(message["content"], add_special_tokens=False)["input_ids"]
        newline = chat_tokenizer("\n", add_special_tokens=False)["input_ids"]
        supervised = message["role"] == "assistant"
        expected += [False] * len(header) + [supervised] * (len(body) + 1) + [False] * len(newline)
    assert len(expected) == len(full_ids)
    assert [label != -100 for label in sample["labels"]] == expected[1:]
    for t, label in enumerate(sample["labels"]):
        assert label in (-100, full_ids[t + 1])
    assert chat_tokenizer.decode(supervised_targets(sample)) == "I am fine, thank you.<|im_end|>Paris.<|im_end|>"
    assert supervised_targets(sample).count(im_end) == 2


def test_content_parts_are_joined(tmp_path, chat_tokenizer):
    conversation = copy.deepcopy(CONVERSATION[1:3])
    conversation[1]["content"] = [{"type": "text", "text": "I am fine,"}, {"type": "text", "text": "thank you."}]
    sample = make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [conversation]))[0]
    assert chat_tokenizer.decode(supervised_targets(sample)) == "I am fine,\nthank you.<|im_end|>"


def test_conversation_not_ending_with_the_assistant_is_an_error(tmp_path, chat_tokenizer):
    path = chat_file(tmp_path, [CONVERSATION, CONVERSATION[:2]])
    with pytest.raises(DatasetError, match="row 1: the last message is from 'user'"):
        make_chat_dataset(chat_tokenizer, path)


def test_unknown_role_and_missing_column_are_errors(tmp_path, chat_tokenizer):
    bad = [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    with pytest.raises(DatasetError, match="row 0: message 0 has role 'human'"):
        make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [bad]))
    with pytest.raises(DatasetError, match=r"column 'conversations' .*columns present: \['messages'\]"):
        make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [CONVERSATION]), messages_column="conversations")


def test_tokenizer_without_chat_template_is_an_error(tmp_path, plain_tokenizer):
    with pytest.raises(DatasetError, match="needs a tokenizer with a chat template"):
        make_chat_dataset(plain_tokenizer, chat_file(tmp_path, [CONVERSATION]))


def test_template_that_is_not_prefix_stable_is_an_error(tmp_path, chat_tokenizer):
    tokenizer = copy.deepcopy(chat_tokenizer)
    # Announcing the number of turns up front changes the start of the text whenever a turn is added.
    tokenizer.chat_template = "{{ messages | length }} turns\n" + chat_tokenizer.chat_template
    with pytest.raises(DatasetError, match="row 0: the chat template is not prefix-stable"):
        make_chat_dataset(tokenizer, chat_file(tmp_path, [CONVERSATION]))


def test_conversation_with_no_supervised_token_is_an_error(tmp_path, chat_tokenizer):
    tokenizer = copy.deepcopy(chat_tokenizer)
    # A template that drops assistant turns leaves nothing to learn.
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{ m['content'] }}{% endif %}{% endfor %}"
    )
    with pytest.raises(DatasetError, match="row 0 has no token that carries loss"):
        make_chat_dataset(tokenizer, chat_file(tmp_path, [CONVERSATION]))


def test_truncation_keeps_the_first_assistant_turn(tmp_path, chat_tokenizer):
    full = make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [CONVERSATION]))[0]
    cut = make_chat_dataset(chat_tokenizer, chat_file(tmp_path, [CONVERSATION]), seq_length=len(full["input_ids"]) - 5)[
        0
    ]
    assert cut["input_ids"] == full["input_ids"][: len(cut["input_ids"])]
    assert chat_tokenizer.decode(supervised_targets(cut)).startswith("I am fine, thank you.<|im_end|>")
