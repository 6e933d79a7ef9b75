"""Resource limits of the VLM recipe: bad sizes and rates (the collate_fn's max_length included) are refused at
validation, max_length is checked against the language model's positions (and set to them when unset), and a batch
larger than the dataset is an error before training."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from automodel.components.config import ConfigNode, ConfigValidationError, load_config
from automodel.components.datasets.vlm import default_collate_fn
from automodel.recipes import _limits
from automodel.recipes.vlm import finetune
from automodel.recipes.vlm.tests.conftest import build_tiny_vlm, write_config


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm("llava", tmp_path_factory.mktemp("llava"))  # text max_position_embeddings: 512


@pytest.fixture
def cfg_path(llava_dir: Path, shapes_data: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", llava_dir, shapes_data, tmp_path / "ckpt")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["--dataloader.collate_fn.max_length", "-1"],
            "dataloader.collate_fn.max_length must be an integer >= 2 (tokens per sample) or null, got -1",
        ),
        (["--dataloader.collate_fn.max_length", "nan"], "dataloader.collate_fn.max_length: got nan"),
        (["--optimizer.lr", "nan"], "optimizer.lr: got nan, which no setting accepts; set a finite number"),
        (["--optimizer.lr", "-1"], "optimizer.lr must be a finite number >= 0, got -1"),
        (["--step_scheduler.local_batch_size", "0"], "step_scheduler.local_batch_size must be a positive integer"),
        (["--lr_scheduler.min_lr", "inf"], "lr_scheduler.min_lr must be a finite number >= 0, got inf"),
    ],
)
def test_bad_sizes_and_rates_are_one_message_each(cfg_path: Path, overrides: list[str], message: str):
    with pytest.raises(ConfigValidationError) as info:
        finetune.validate(load_config(cfg_path, overrides))
    errors = info.value.errors
    assert errors == [errors[0]] and errors[0].startswith(message), errors


def test_cli_prints_one_error_line_and_exits_2(cfg_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune.cli(["-c", str(cfg_path), "--optimizer.lr", "nan"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1 and "optimizer.lr" in err


def test_a_max_length_past_the_model_positions_is_an_error(cfg_path: Path):
    with pytest.raises(
        _limits.LimitError,
        match=r"dataloader.collate_fn.max_length\(4096\) is larger than the model's max_position_embeddings\(512\)",
    ):
        finetune.main(load_config(cfg_path, ["--dataloader.collate_fn.max_length", "4096"]))


def test_an_unset_max_length_is_set_to_the_model_positions():
    partial = functools.partial(default_collate_fn, processor=None)
    node = finetune._within_positions(ConfigNode({"collate_fn": partial}), "dataloader", 512)
    assert node["collate_fn"].keywords == {"processor": None, "max_length": 512}
    chosen = functools.partial(default_collate_fn, processor=None, max_length=128)
    node = finetune._within_positions(ConfigNode({"collate_fn": chosen}), "dataloader", 512)
    assert node["collate_fn"] is chosen


def test_a_batch_larger_than_the_dataset_is_an_error(cfg_path: Path):
    with pytest.raises(_limits.LimitError, match=r"dataset: the training set has 3 sample\(s\), fewer than one global"):
        finetune.main(load_config(cfg_path, ["--dataset.split", "train[:3]"]))
