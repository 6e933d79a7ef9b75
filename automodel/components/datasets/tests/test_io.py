"""Loading rows: local files and directories, split slices, and the errors users hit first."""

import datasets
import pytest

from automodel.components.datasets import ColumnMappedTextInstructionDataset, DatasetError, make_squad_dataset
from automodel.components.datasets.llm._io import load_rows, parse_split
from automodel.components.datasets.tests.conftest import squad_row, write_jsonl

ROWS = [{"instruction": f"question {i}", "output": f"answer {i}"} for i in range(10)]
MAPPING = {"question": "instruction", "answer": "output"}


def ids_of(rows) -> list[str]:
    return list(rows["instruction"])


@pytest.mark.parametrize(
    ("split", "expected"),
    [
        ("train", list(range(10))),
        ("train[:3]", [0, 1, 2]),
        ("train[-2:]", [8, 9]),
        ("train[:90%]", list(range(9))),
        ("train[90%:]", [9]),
        ("train[20%:40%]", [2, 3]),
    ],
)
def test_split_slices_on_a_local_jsonl(tmp_path, split, expected):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    rows, _ = load_rows(str(path), split)
    assert ids_of(rows) == [f"question {i}" for i in expected]


def test_limit_takes_the_first_rows_after_the_slice(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    rows, _ = load_rows(str(path), "train[5:]", limit=2)
    assert ids_of(rows) == ["question 5", "question 6"]


def test_a_single_file_is_one_split_whatever_its_name(tmp_path, caplog):
    path = write_jsonl(tmp_path / "validation.jsonl", ROWS)
    rows, _ = load_rows(str(path), "validation[:2]")
    assert ids_of(rows) == ["question 0", "question 1"]
    assert "a single file holds one split, so the split name 'validation' is ignored" in caplog.text


def test_unparsable_file_is_an_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"instruction": "q"}\n{"instruction": \n')
    with pytest.raises(DatasetError, match="broken.jsonl' split 'train': could not read json data"):
        load_rows(str(path), "train")


def test_bad_split_syntax_is_an_error():
    with pytest.raises(DatasetError, match="split 'train\\[a:b\\]' is not understood"):
        parse_split("train[a:b]")


def test_empty_slice_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    with pytest.raises(DatasetError, match="no rows to use"):
        load_rows(str(path), "train[10:]")


def test_parquet_and_csv_files_load(tmp_path, plain_tokenizer):
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "data.parquet"))
    datasets.Dataset.from_list(ROWS).to_csv(str(tmp_path / "data.csv"), index=False)
    for name in ("data.parquet", "data.csv"):
        ds = ColumnMappedTextInstructionDataset(str(tmp_path / name), MAPPING, plain_tokenizer, split="train[:4]")
        assert len(ds) == 4


def test_directory_picks_the_split_file_and_lists_available_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "validation.jsonl", ROWS[:3])
    rows, _ = load_rows(str(tmp_path), "validation")
    assert len(rows) == 3
    with pytest.raises(
        DatasetError, match=r"split 'test' does not exist .*available splits: \['train', 'validation'\]"
    ):
        load_rows(str(tmp_path), "test")


def test_save_to_disk_folder_loads(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}).save_to_disk(str(tmp_path / "saved"))
    rows, _ = load_rows(str(tmp_path / "saved"), "train[:2]")
    assert ids_of(rows) == ["question 0", "question 1"]
    with pytest.raises(DatasetError, match=r"available splits: \['train'\]"):
        load_rows(str(tmp_path / "saved"), "validation")


def test_missing_local_file_is_an_error_and_never_goes_to_the_hub(plain_tokenizer):
    with pytest.raises(DatasetError, match="local path 'data/missing.jsonl' does not exist"):
        make_squad_dataset(plain_tokenizer, "data/missing.jsonl")
    with pytest.raises(DatasetError, match="local path './nowhere' does not exist"):
        make_squad_dataset(plain_tokenizer, "./nowhere")


def test_unreachable_hub_dataset_is_a_one_line_error(monkeypatch, plain_tokenizer):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError, match="could not load dataset 'someone/some-data' from the Hugging Face Hub") as e:
        make_squad_dataset(plain_tokenizer, "someone/some-data")
    assert "HF_DATASETS_OFFLINE" in str(e.value) and "\n" not in str(e.value)


def test_missing_column_lists_the_columns_present(tmp_path, plain_tokenizer):
    path = write_jsonl(tmp_path / "data.jsonl", ROWS)
    with pytest.raises(
        DatasetError, match=r"column 'response' \(for column_mapping.answer\) not found; columns present"
    ):
        ColumnMappedTextInstructionDataset(
            str(path), {"question": "instruction", "answer": "response"}, plain_tokenizer
        )
    with pytest.raises(DatasetError, match=r"column 'context' .*\['instruction', 'output'\]"):
        make_squad_dataset(plain_tokenizer, str(path))


def test_malformed_row_names_its_index(tmp_path, plain_tokenizer):
    path = write_jsonl(tmp_path / "data.jsonl", [squad_row(0), {**squad_row(1), "answers": None}])
    with pytest.raises(DatasetError, match="row 1: 'answers' must be"):
        make_squad_dataset(plain_tokenizer, str(path))


def test_a_list_of_files_and_an_in_memory_dataset_load(tmp_path, plain_tokenizer):
    first = write_jsonl(tmp_path / "a.jsonl", ROWS[:4])
    second = write_jsonl(tmp_path / "b.jsonl", ROWS[4:])
    rows, _ = load_rows([str(first), str(second)], "train[-3:]")
    assert ids_of(rows) == ["question 7", "question 8", "question 9"]
    in_memory = datasets.Dataset.from_list([squad_row(i) for i in range(5)])
    assert len(make_squad_dataset(plain_tokenizer, in_memory, split="train[:2]")) == 2
