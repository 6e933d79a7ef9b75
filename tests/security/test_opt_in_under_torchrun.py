"""The user's `--allow-target` reaches every torchrun rank (they re-read the config), and the config still cannot
opt itself in: the same run without the flag is refused before anything is launched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from automodel.recipes.llm.tests.conftest import REPO, tiny_model_dir, write_config  # noqa: F401 - a fixture

USER_MODULE = '''
"""A user's own dataset builder: wraps ours and leaves a mark per rank, so the test sees that each rank built it."""
import os
from pathlib import Path
from automodel.components.datasets.llm.squad import make_squad_dataset

def build(tokenizer, marks, **kwargs):
    Path(marks, f"rank{os.environ.get('RANK', '0')}").write_text("built")
    return make_squad_dataset(tokenizer, **kwargs)
'''


@pytest.mark.slow
def test_allow_target_reaches_both_ranks(tiny_model_dir: Path, tmp_path: Path):  # noqa: F811
    package = tmp_path / "pkgs"
    package.mkdir()
    (package / "user_datasets_optin.py").write_text(textwrap.dedent(USER_MODULE))
    marks = tmp_path / "marks"
    marks.mkdir()
    cfg = write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")
    text = cfg.read_text().replace(
        "  _target_: automodel.components.datasets.llm.squad.make_squad_dataset\n  dataset_name:",
        f"  _target_: user_datasets_optin.build\n  marks: {marks}\n  dataset_name:",
        1,
    )
    cfg.write_text(text)
    env = {**os.environ, "PYTHONPATH": f"{package}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("AUTOMODEL_ALLOWED_TARGETS", None)
    common = [
        "-c",
        str(cfg),
        "--nproc-per-node",
        "2",
        "--step_scheduler.max_steps",
        "1",
        "--step_scheduler.val_every_steps",
        "none",
        "--checkpoint.enabled",
        "false",
        "--logging.log_dir",
        str(tmp_path / "logs"),
    ]
    refused = subprocess.run(
        [sys.executable, "-m", "automodel", "llm", "finetune", *common],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert refused.returncode == 2 and "--allow-target user_datasets_optin.build" in refused.stderr
    assert not list(marks.iterdir())
    allowed = subprocess.run(
        [sys.executable, "-m", "automodel", "llm", "finetune", *common, "--allow-target", "user_datasets_optin"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert sorted(p.name for p in marks.iterdir()) == ["rank0", "rank1"]
