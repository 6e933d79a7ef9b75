import sys

import pytest

from automodel.components.launcher import LaunchError, build_torchrun_command, run_torchrun


def test_command_shape():
    cmd = build_torchrun_command("recipe.py", ["-c", "x.yaml", "--a.b", "1"], nproc_per_node=2)
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and "--nproc-per-node=2" in cmd
    assert cmd[-5:] == ["recipe.py", "-c", "x.yaml", "--a.b", "1"]


def test_bad_nproc():
    with pytest.raises(LaunchError, match="--nproc-per-node must be >= 1"):
        build_torchrun_command("recipe.py", [], nproc_per_node=0)


def test_runs_every_rank_and_returns_status(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import os, sys\n"
        "open(sys.argv[1] + os.environ['RANK'], 'w').write(os.environ['WORLD_SIZE'])\n"
        "sys.exit(int(sys.argv[2]))\n"
    )
    out = str(tmp_path / "rank")
    assert run_torchrun(build_torchrun_command(str(script), [out, "0"], nproc_per_node=2)) == 0
    assert (tmp_path / "rank0").read_text() == "2" and (tmp_path / "rank1").read_text() == "2"
    assert run_torchrun(build_torchrun_command(str(script), [out, "3"], nproc_per_node=1)) != 0
