"""Fixtures of the compatibility tests: the recipes' tiny offline models and data."""

from __future__ import annotations

from pathlib import Path

import pytest

from automodel.recipes.llm.tests.conftest import tiny_model_dir  # noqa: F401  (shared session fixture)
from automodel.recipes.vlm.tests.conftest import build_tiny_vlm, shapes_data  # noqa: F401  (shared session fixture)


@pytest.fixture(scope="session")
def tiny_qwen_vl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny Qwen2.5-VL (the family of the reference system's qwen2_5 VLM examples), not all four families."""
    return build_tiny_vlm("qwen2_5_vl", tmp_path_factory.mktemp("tiny_qwen_vl"))
