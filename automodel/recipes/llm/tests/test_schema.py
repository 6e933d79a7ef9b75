"""One Section per config section drives both validation and the build, so they cannot drift (issue #13)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from automodel.components.config import (
    ConfigError,
    ConfigNode,
    ConfigValidationError,
    Section,
    build_section,
    load_config,
)
from automodel.recipes import _common
from automodel.recipes.llm import finetune as llm
from automodel.recipes.llm.tests.conftest import write_config
from automodel.recipes.vlm import finetune as vlm

RECIPES = Path(llm.__file__).parents[1]


def _cfg(tmp_path: Path, *overrides: str) -> ConfigNode:
    return load_config(write_config(tmp_path / "cfg.yaml", tmp_path / "no-model", tmp_path / "ckpt"), list(overrides))


def test_recipes_build_sections_only_through_their_schema():
    # Every section a recipe builds goes through build_section(cfg, name, SCHEMA[name]); no direct instantiate().
    for path in (RECIPES / "llm" / "finetune.py", RECIPES / "vlm" / "finetune.py", RECIPES / "_common.py"):
        source = path.read_text()
        assert "instantiate(" not in source, path
        for name in re.findall(r'build_section\(cfg, "(\w+)", (?:SCHEMA|schema)\["(\w+)"\]', source):
            assert name[0] == name[1], (path, name)  # the section's own entry, never another's


@pytest.mark.parametrize("schema", [llm.SCHEMA, vlm.SCHEMA], ids=["llm", "vlm"])
def test_validation_and_build_accept_the_same_keys(schema, tmp_path):
    # For each section built from one of our config classes: an unknown key fails validation and the build alike,
    # and a valid section passes both.
    for name, section in schema.items():
        target = section.default_target
        if not (inspect.isclass(target) and target.__module__.startswith("automodel.") and not section.provided):
            continue
        cfg = ConfigNode({name: {"no_such_key_xyz": 1}})
        with pytest.raises(ConfigValidationError, match=rf"{name}\.no_such_key_xyz: unknown key"):
            from automodel.components.config import validate_config

            validate_config(cfg, {name: section})
        with pytest.raises(ConfigError, match="no_such_key_xyz"):
            build_section(cfg, name, section)
        assert isinstance(build_section(ConfigNode({name: {}}), name, section), target)


@pytest.mark.parametrize(
    "override, message",
    [
        (("--step_scheduler.dp_size", "4"), r"step_scheduler\.dp_size: the recipe supplies 'dp_size' itself"),
        (("--optimizer.params", "[1]"), r"optimizer\.params: the recipe supplies 'params' itself"),
        (("--lr_scheduler.total_steps", "9"), r"lr_scheduler\.total_steps: the recipe supplies 'total_steps' itself"),
        (("--dataloader.batch_size", "3"), r"dataloader\.batch_size: .* from step_scheduler\.local_batch_size \(2\)"),
        (
            ("--distributed.dp_size", "3"),
            r"global_batch_size\(4\) must be a multiple of local_batch_size\(2\) x "
            r"data-parallel size\(3\)",
        ),  # the batch rule uses distributed.dp_size, not only tp and cp
    ],
)
def test_a_key_the_recipe_supplies_is_refused_not_dropped(tmp_path, override, message):
    with pytest.raises(ConfigValidationError, match=message):
        llm.validate(_cfg(tmp_path, *override), world_size=3 if "dp_size" in override[0] else 1)


def test_mirrored_and_overridable_keys(tmp_path):
    llm.validate(_cfg(tmp_path, "--dataloader.batch_size", "2"))  # equals local_batch_size: nothing is lost
    llm.validate(_cfg(tmp_path, "--step_scheduler.dp_size", "1", "--distributed.dp_size", "1"))
    llm.validate(_cfg(tmp_path, "--dataset.seq_length", "64"))  # the recipe caps it only when unset
    section = _common.COMMON_SECTIONS["step_scheduler"]
    cfg = _cfg(tmp_path, "--step_scheduler.dp_size", "2")
    with pytest.raises(ConfigError, match="the recipe supplies 'dp_size' itself"):
        build_section(cfg, "step_scheduler", section, dp_size=1, dataloader=None)
    with pytest.raises(TypeError, match="does not declare"):
        build_section(cfg, "optimizer", Section(), params=[])  # a recipe bug, not a config mistake
