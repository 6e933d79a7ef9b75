"""`model.init_device: meta` end to end: the recipe hands the loader's weights folder to parallelize_model, which
loads the shards; the run trains exactly like one that loaded the weights up front."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.components.config import load_config
from automodel.recipes.llm import finetune
from automodel.recipes.llm.tests.conftest import write_config


@pytest.mark.slow
def test_meta_device_init_trains_like_a_normal_load(tiny_model_dir: Path, tmp_path: Path):
    common = ["--step_scheduler.max_steps", "2", "--step_scheduler.val_every_steps", "none"]
    losses = {}
    for name, extra in (("eager", []), ("meta", ["--model.init_device", "meta"])):
        cfg_path = write_config(tmp_path / f"{name}.yaml", tiny_model_dir, tmp_path / f"ckpt_{name}")
        summary = finetune.main(load_config(cfg_path, [*common, *extra]))
        losses[name] = summary["train_losses"]
        assert summary["checkpoint"] is not None
    assert losses["meta"] == pytest.approx(losses["eager"], abs=1e-6)
