import re

from automodel.components.datasets import render_sample


def make_sample(tokenizer):
    prompt = tokenizer("<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    answer = tokenizer("Paris.<|im_end|>", add_special_tokens=False)
    ids = prompt["input_ids"] + answer["input_ids"]
    supervised = [False] * len(prompt["input_ids"]) + [True] * len(answer["input_ids"])
    return (
        {
            "input_ids": ids[:-1],
            "labels": [tok if sup else -100 for tok, sup in zip(ids[1:], supervised[1:], strict=True)],
        },
        len(ids),
        len(answer["input_ids"]),
    )


def test_plain_marks_exactly_the_supervised_tokens(chat_tokenizer):
    sample, num_tokens, num_supervised = make_sample(chat_tokenizer)
    text = render_sample(sample, chat_tokenizer, color=False)
    header, body = text.split("\n", 1)
    assert header.startswith(f"{num_tokens} tokens, {num_supervised} supervised")
    assert re.findall(r"\[\[(.*?)\]\]", body, flags=re.S) == ["Paris.<|im_end|>"]
    assert body == "<|im_start|>user\nWhere?<|im_end|>\n<|im_start|>assistant\n[[Paris.<|im_end|>]]"


def test_color_wraps_supervised_in_green_and_the_rest_dim(chat_tokenizer):
    sample, _, _ = make_sample(chat_tokenizer)
    body = render_sample(sample, chat_tokenizer).split("\n", 1)[1]
    assert "\x1b[32mParis.<|im_end|>\x1b[0m" in body
    assert body.startswith("\x1b[2m<|im_start|>user")
    assert "[[" not in body


def test_interleaved_turns_and_a_trailing_unsupervised_token(chat_tokenizer):
    sample = {"input_ids": [10, 11, 12, 13], "labels": [11, -100, 13, -100]}
    body = render_sample(sample, chat_tokenizer, color=False).split("\n", 1)[1]
    decode = chat_tokenizer.decode
    assert body == f"{decode([10])}[[{decode([11])}]]{decode([12])}[[{decode([13])}]]"
