"""The shipped facts_squad data and its generator: SQuAD schema, exact answer offsets, no entity leakage."""

import importlib.util
import json
from pathlib import Path

import pytest

from automodel.components.datasets import make_squad_dataset
from automodel.components.datasets.tests.conftest import supervised_targets

DATA_DIR = Path(__file__).resolve().parents[4] / "examples" / "llm" / "data"


@pytest.fixture(scope="module")
def generator():
    spec = importlib.util.spec_from_file_location("generate_facts_squad", DATA_DIR / "generate_facts_squad.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_rows(rows: list[dict]) -> None:
    for row in rows:
        assert set(row) == {"id", "title", "context", "question", "answers"}
        assert set(row["answers"]) == {"text", "answer_start"}
        (text,), (start,) = row["answers"]["text"], row["answers"]["answer_start"]
        assert text and row["context"][start : start + len(text)] == text, row["id"]
    assert len({row["id"] for row in rows}) == len(rows)


def test_generator_is_deterministic_and_obeys_the_answer_offsets(tmp_path, generator):
    generator.main(["--out-dir", str(tmp_path / "a"), "--num-train", "40", "--num-validation", "12"])
    generator.main(["--out-dir", str(tmp_path / "b"), "--num-train", "40", "--num-validation", "12"])
    for split, count in (("train", 40), ("validation", 12)):
        rows = read(tmp_path / "a" / f"{split}.jsonl")
        assert len(rows) == count
        check_rows(rows)
        assert (tmp_path / "a" / f"{split}.jsonl").read_bytes() == (tmp_path / "b" / f"{split}.jsonl").read_bytes()
    question_words = {row["question"].split()[0] for row in read(tmp_path / "a" / "train.jsonl")}
    assert {"Who", "When", "How"} <= question_words


def test_shipped_files_are_valid_small_and_disjoint():
    train = read(DATA_DIR / "facts_squad" / "train.jsonl")
    validation = read(DATA_DIR / "facts_squad" / "validation.jsonl")
    assert (len(train), len(validation)) == (2000, 200)
    check_rows(train)
    check_rows(validation)
    assert not {row["title"] for row in train} & {row["title"] for row in validation}
    assert not {row["context"] for row in train} & {row["context"] for row in validation}
    size = sum((DATA_DIR / "facts_squad" / f).stat().st_size for f in ("train.jsonl", "validation.jsonl"))
    assert size < 1.5e6


def test_shipped_directory_loads_as_squad(chat_tokenizer):
    ds = make_squad_dataset(chat_tokenizer, str(DATA_DIR / "facts_squad"), split="validation[:5]")
    row = read(DATA_DIR / "facts_squad" / "validation.jsonl")[0]
    assert len(ds) == 5
    assert chat_tokenizer.decode(supervised_targets(ds[0])) == row["answers"]["text"][0] + "<|im_end|>"
