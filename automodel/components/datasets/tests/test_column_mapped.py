import pytest

from automodel.components.datasets import ColumnMappedTextInstructionDataset, DatasetError
from automodel.components.datasets.tests.conftest import supervised_targets, write_jsonl

ROWS = [
    {"instruction": "Where does the Tavel rise?", "input": "The Tavel rises in the Orm hills.", "output": "Orm hills"},
    {"instruction": "Say hello.", "input": "", "output": "Hello there"},
    {"instruction": "Say hi.", "input": None, "output": "hi"},
]
MAPPING = {"question": "instruction", "context": "input", "answer": "output"}


@pytest.fixture
def alpaca_file(tmp_path):
    return str(write_jsonl(tmp_path / "alpaca.jsonl", ROWS))


def test_maps_columns_and_omits_an_empty_context(plain_tokenizer, alpaca_file):
    ds = ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, plain_tokenizer)
    decode = plain_tokenizer.decode
    assert decode(ds[0]["input_ids"]).startswith("<s>Context: The Tavel rises in the Orm hills. Question: Where")
    assert decode(ds[1]["input_ids"]) == "<s>Question: Say hello. Answer: Hello there"
    assert decode(ds[2]["input_ids"]) == "<s>Question: Say hi. Answer: hi"
    assert [decode(supervised_targets(ds[i])) for i in range(3)] == [" Orm hills</s>", " Hello there</s>", " hi</s>"]


def test_chat_template_puts_context_and_question_in_the_user_turn(chat_tokenizer, alpaca_file):
    ds = ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, chat_tokenizer, use_hf_chat_template=True)
    sample = ds[0]
    assert chat_tokenizer.decode(sample["input_ids"]) == (
        "<|im_start|>user\nContext: The Tavel rises in the Orm hills.\nQuestion: Where does the Tavel rise?<|im_end|>\n"
        "<|im_start|>assistant\nOrm hills<|im_end|>"
    )
    assert sample["labels"][-1] == -100  # the last target is the newline after <|im_end|>: no loss
    assert chat_tokenizer.decode(supervised_targets(sample)) == "Orm hills<|im_end|>"


def test_loss_on_every_token_when_not_answer_only(plain_tokenizer, alpaca_file):
    ds = ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, plain_tokenizer, answer_only_loss_mask=False)
    sample = ds[1]
    assert sample["labels"] == sample["input_ids"][1:] + [plain_tokenizer.eos_token_id]


def test_column_mapping_errors(plain_tokenizer, alpaca_file):
    with pytest.raises(DatasetError, match=r"unknown role\(s\) \['prompt'\]"):
        ColumnMappedTextInstructionDataset(alpaca_file, {"prompt": "instruction", "answer": "output"}, plain_tokenizer)
    with pytest.raises(DatasetError, match=r"needs the role\(s\) \['answer'\]"):
        ColumnMappedTextInstructionDataset(alpaca_file, {"question": "instruction"}, plain_tokenizer)
    with pytest.raises(DatasetError, match="use_chat_template=False and use_hf_chat_template=True disagree"):
        ColumnMappedTextInstructionDataset(
            alpaca_file, MAPPING, plain_tokenizer, use_chat_template=False, use_hf_chat_template=True
        )


def test_wrong_cell_type_and_empty_answer_name_the_row(tmp_path, plain_tokenizer):
    bad_type = write_jsonl(tmp_path / "a.jsonl", [{"q": "x", "a": "y"}, {"q": "x", "a": 3}])
    with pytest.raises(DatasetError, match=r"row 1: column 'a' \(answer\) must be a string, got int"):
        ColumnMappedTextInstructionDataset(str(bad_type), {"question": "q", "answer": "a"}, plain_tokenizer)
    empty = write_jsonl(tmp_path / "b.jsonl", [{"q": "x", "a": "y"}, {"q": "x", "a": " "}])
    with pytest.raises(DatasetError, match="row 1 has an empty answer"):
        ColumnMappedTextInstructionDataset(str(empty), {"question": "q", "answer": "a"}, plain_tokenizer)


def test_reference_padding_and_truncation_options(plain_tokenizer, alpaca_file):
    plain = ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, plain_tokenizer, seq_length=40)
    same = ColumnMappedTextInstructionDataset(
        alpaca_file, MAPPING, plain_tokenizer, seq_length=40, padding="do_not_pad", truncation="longest_first"
    )
    assert [same[i] for i in range(3)] == [plain[i] for i in range(3)]  # the reference options mean our defaults
    ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, plain_tokenizer, truncation="do_not_truncate")
    with pytest.raises(DatasetError, match=r"padding='max_length': samples are not padded one by one here"):
        ColumnMappedTextInstructionDataset(alpaca_file, MAPPING, plain_tokenizer, padding="max_length")
    with pytest.raises(DatasetError, match=r"truncation='do_not_truncate' keeps samples longer than seq_length=40"):
        ColumnMappedTextInstructionDataset(
            alpaca_file, MAPPING, plain_tokenizer, seq_length=40, truncation="do_not_truncate"
        )
    with pytest.raises(DatasetError, match=r"truncation='longest_first' and on_overflow='drop' disagree"):
        ColumnMappedTextInstructionDataset(
            alpaca_file, MAPPING, plain_tokenizer, truncation="longest_first", on_overflow="drop"
        )
