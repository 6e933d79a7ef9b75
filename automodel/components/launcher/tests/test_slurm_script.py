"""The generated sbatch script (checked as text and by bash), container options, mounts, and submission through a
stand-in `sbatch` that records what it was given."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from automodel.components.launcher import (
    LaunchError,
    SlurmConfig,
    build_slurm_job,
    find_checkout,
    submit_slurm_job,
)

REPO = Path(__file__).resolve().parents[4]
RECIPE = "automodel.recipes.llm.finetune"


def build(tmp_path: Path, checkout: Path | None = None, nproc: int = 2, cwd: Path | None = None, **settings):
    config = SlurmConfig.from_dict({"job_dir": str(tmp_path / "job"), **settings}, job_name="llm_finetune")
    return build_slurm_job(
        config,
        config_text="model: {}\n",
        recipe_module=RECIPE,
        nproc_per_node=nproc,
        checkout=checkout,
        cwd=cwd or tmp_path,
    )


def sbatch_options(script: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in script.splitlines() if line.startswith("#SBATCH ")]


def srun_command(script: str) -> str:
    """The srun step as one line (continuations joined)."""
    text = script.replace(" \\\n  ", " ")
    return next(line for line in text.splitlines() if line.startswith("srun "))


def test_script_without_container_uses_this_python(tmp_path):
    job = build(tmp_path, nodes=2, gpus_per_node=8, nproc=8, time="04:00:00", account="proj", partition="batch")
    options = sbatch_options(job.script)
    for expected in (
        "--job-name=llm_finetune",
        "--nodes=2",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--time=04:00:00",
        "--account=proj",
        "--partition=batch",
        f"--output={tmp_path}/job/%j.out",
        f"--error={tmp_path}/job/%j.err",
        "--open-mode=append",
        "--export=ALL",
        "--signal=B:USR1@300",
        "--requeue",
    ):
        assert expected in options, (expected, options)
    step = srun_command(job.script)
    assert "--container" not in job.script
    assert f"{sys.executable} -m torch.distributed.run" in step
    for expected in (
        '--ntasks="$SLURM_NNODES" --ntasks-per-node=1',
        '--nnodes="$SLURM_NNODES"',
        "--nproc-per-node=8",
        "--rdzv-backend=c10d",
        '--rdzv-endpoint="$HEAD_NODE:$MASTER_PORT"',
        '--rdzv-id="$SLURM_JOB_ID"',
        f"--module {RECIPE} -c {tmp_path}/job/config.yaml",
    ):
        assert expected in step, (expected, step)
    assert 'HEAD_NODE=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in job.script
    assert "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))" in job.script
    assert "export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in job.script
    assert f"cd {tmp_path}" in job.script
    assert "PYTHONPATH" not in job.script  # no checkout: the installed package runs


def test_script_is_valid_bash(tmp_path):
    job = build(tmp_path, env_vars={"A": 'quote " and $dollar', "B": "${HOME,/x}"}, container_image="img:1")
    result = subprocess.run(["bash", "-n"], input=job.script, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_env_vars_are_quoted_and_placeholders_expand_when_the_job_runs(tmp_path):
    job = build(tmp_path, env_vars={"NCCL_DEBUG": "INFO", "ODD": 'a"b$c', "TOKEN_USED": "${HF_TOKEN}", "D": "${X,de}"})
    exports = "\n".join(line for line in job.script.splitlines() if line.startswith("export "))
    env = {"HF_TOKEN": "hf_value", "PATH": os.environ["PATH"]}
    probe = exports + '\nprintf "%s|%s|%s|%s" "$NCCL_DEBUG" "$ODD" "$TOKEN_USED" "$D"'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, env=env).stdout
    assert out == 'INFO|a"b$c|hf_value|de'
    assert "hf_value" not in job.script


def test_checkout_goes_on_pythonpath(tmp_path):
    checkout = tmp_path / "repo"
    job = build(tmp_path, checkout=checkout)
    assert f'export PYTHONPATH={checkout}"${{PYTHONPATH:+:$PYTHONPATH}}"' in job.script


def test_container_options(tmp_path):
    checkout, data, work = tmp_path / "repo", tmp_path / "data", tmp_path / "work"
    data.mkdir()
    job = build(
        tmp_path,
        checkout=checkout,
        cwd=work,
        container_image="nvcr.io#nvidia/pytorch:25.01-py3",
        extra_mounts=[f"{data}:/data:ro", str(data)],
        hf_home=str(tmp_path / "hf"),
    )
    step = srun_command(job.script)
    assert "--container-image='nvcr.io#nvidia/pytorch:25.01-py3'" in step
    mounts = re.search(r"--container-mounts=(\S+)", step).group(1).split(",")
    # The checkout (code), the job dir, where it was submitted, HF_HOME, then the user's mounts.
    assert mounts == [
        f"{checkout}:{checkout}",
        f"{tmp_path}/job:{tmp_path}/job",
        f"{work}:{work}",
        f"{tmp_path}/hf:{tmp_path}/hf",
        f"{data}:/data:ro",
        f"{data}:{data}",
    ]
    assert f"--container-workdir={work}" in step
    assert "python -m torch.distributed.run" in step  # the container's python, not this machine's


def test_identity_mounts_inside_another_are_dropped(tmp_path):
    checkout = tmp_path / "repo"
    config = SlurmConfig(container_image="img", job_dir=str(checkout / "slurm_jobs" / "j"))
    job = build_slurm_job(
        config, config_text="", recipe_module=RECIPE, nproc_per_node=1, checkout=checkout, cwd=checkout
    )
    mounts = re.search(r"--container-mounts=(\S+)", srun_command(job.script)).group(1)
    assert mounts == f"{checkout}:{checkout}"


def test_missing_mount_source(tmp_path):
    with pytest.raises(LaunchError, match=r"slurm\.extra_mounts\[0\]: the mount source .*/nope does not exist"):
        build(tmp_path, container_image="img", extra_mounts=[f"{tmp_path}/nope:/data"])


def test_bad_mount_syntax(tmp_path):
    with pytest.raises(LaunchError, match=r"slurm\.extra_mounts\[0\]: .* write SRC:DST"):
        build(tmp_path, container_image="img", extra_mounts=["a:b:c:d"])
    with pytest.raises(LaunchError, match=r"destination 'data' must be an absolute path"):
        build(tmp_path, container_image="img", extra_mounts=[f"{tmp_path}:data"])


def test_missing_squashfs_image(tmp_path):
    with pytest.raises(LaunchError, match=r"slurm\.container_image: .*pytorch\.sqsh.* does not exist"):
        build(tmp_path, container_image=str(tmp_path / "pytorch.sqsh"))


def test_mounts_without_container_warn(tmp_path, caplog):
    build(tmp_path, extra_mounts=[str(tmp_path)])
    assert "slurm.extra_mounts is ignored" in caplog.text


def test_no_requeue_and_custom_options(tmp_path):
    job = build(tmp_path, requeue=False, signal_before_s=120, master_port=29555, extra_sbatch_args=["--exclusive"])
    options = sbatch_options(job.script)
    assert "--no-requeue" in options and "--signal=B:USR1@120" in options and "--exclusive" in options
    assert "scontrol requeue" not in job.script
    assert "MASTER_PORT=29555" in job.script
    assert "export PET_SHUTDOWN_TIMEOUT=120" in job.script


def test_find_checkout(tmp_path):
    assert find_checkout(tmp_path) is None
    if shutil.which("git") and (REPO / ".git").exists():
        assert find_checkout(REPO / "automodel" / "components") == REPO


# --- submission ----------------------------------------------------------------------------------------------------
@pytest.fixture()
def fake_sbatch(tmp_path, monkeypatch):
    """An `sbatch` on PATH that records its arguments and environment, and prints a job id like --parsable."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "sbatch"
    script.write_text(
        f'#!/bin/sh\necho "$@" > {tmp_path}/sbatch.args\nenv > {tmp_path}/sbatch.env\necho "4242;cluster"\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return tmp_path


def test_submit_writes_job_dir_and_passes_secrets_through_the_environment(fake_sbatch, monkeypatch):
    tmp_path = fake_sbatch
    monkeypatch.setenv("WANDB_API_KEY", "wandb-sentinel-123")
    monkeypatch.setenv("HF_TOKEN", "hf-sentinel-456")
    job = build(tmp_path, env_vars={"HF_TOKEN": "${HF_TOKEN}"})
    assert submit_slurm_job(job) == "4242"
    assert job.config_path.read_text() == "model: {}\n"
    assert job.script_path.read_text() == job.script and os.access(job.script_path, os.X_OK)
    assert (tmp_path / "sbatch.args").read_text().split() == ["--parsable", "--export=ALL", str(job.script_path)]
    env = (tmp_path / "sbatch.env").read_text()
    assert "WANDB_API_KEY=wandb-sentinel-123" in env and "HF_TOKEN=hf-sentinel-456" in env
    for path in job.job_dir.rglob("*"):
        text = path.read_text()
        assert "wandb-sentinel" not in text and "hf-sentinel" not in text, path
    assert job.log_paths("4242") == (job.job_dir / "4242.out", job.job_dir / "4242.err")


def test_sbatch_missing_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    job = build(tmp_path)
    with pytest.raises(LaunchError, match=r"sbatch: not found on PATH.*--dry-run prints the batch script"):
        submit_slurm_job(job)
    assert not job.job_dir.exists()


def test_sbatch_refusal_is_reported(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(LaunchError, match=r"sbatch refused .*sbatch\.sh \(exit 1\): sbatch: error: invalid partition"):
        submit_slurm_job(build(tmp_path, partition="nope"))
