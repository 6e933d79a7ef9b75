"""Choice-valued keys are typed as Literal, so `validate` reports a typo (with a suggestion) before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.components.config import ConfigValidationError, load_config
from automodel.recipes.llm import finetune
from automodel.recipes.llm.tests.conftest import write_config


@pytest.mark.parametrize(
    "override, message",
    [
        (
            ("--lr_scheduler.lr_decay_style", "cosin"),
            r"lr_scheduler\.lr_decay_style: 'cosin' is not one of .*did you mean 'cosine'",
        ),
        (("--lr_scheduler.lr_wsd_decay_style", "exp"), r"lr_scheduler\.lr_wsd_decay_style: 'exp' is not one of"),
        (("--dataset.on_overflow", "trunc"), r"dataset\.on_overflow: 'trunc' is not one of 'truncate', 'drop'"),
        (
            ("--packed_sequence.on_overflow", "dorp"),
            r"packed_sequence\.on_overflow: 'dorp' is not one of .*did you mean 'drop'",
        ),
    ],
)
def test_a_typo_in_a_choice_is_caught_by_validate(tmp_path: Path, override, message):
    # no model is built: validate runs before anything loads (the model folder need not even exist)
    cfg = load_config(write_config(tmp_path / "cfg.yaml", tmp_path / "no-model", tmp_path / "ckpt"), list(override))
    with pytest.raises(ConfigValidationError, match=message):
        finetune.validate(cfg)
