"""`automodel llm finetune -c cfg.yaml` with a `slurm:` or `k8s:` section: dry runs print and write nothing,
submissions write the job directory and report where to look, and each mistake is one `error:` line. At the end,
SLURM for real: a 2-process fine-tune submitted through the CLI to a local cluster, and its pre-emption."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from automodel.cli.app import main
from automodel.components.launcher.tests.test_slurm_real import TERMINAL_STATES, LocalSlurm, local_slurm
from automodel.recipes.llm.tests.conftest import REPO, write_config

SLURM = 'slurm:\n  nodes: 1\n  ntasks_per_node: 2\n  time: "00:30:00"\n  partition: debug\n'
K8S = "k8s:\n  image: ghcr.io/example/automodel:0.1\n  job_name: sft-test\n  nodes: 2\n  nproc_per_node: 1\n"


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run from an empty directory outside any checkout, so default job dirs land here."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture()
def cfg(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "cfg.yaml", tiny_model_dir, tmp_path / "ckpt")


def with_section(cfg: Path, section: str) -> Path:
    cfg.write_text(cfg.read_text() + section)
    return cfg


def run_cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[object, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def expect_user_error(capsys: pytest.CaptureFixture, *argv: str) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err[err.index("error:") :]


def fake_tool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


# --- SLURM ---------------------------------------------------------------------------------------------------------
def test_slurm_dry_run_prints_the_script_and_writes_nothing(capsys, cfg, workdir):
    code, out, _ = run_cli(capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM)), "--dry-run")
    assert code == 0
    assert out.startswith("#!/bin/bash") and "#SBATCH --partition=debug" in out and "--nproc-per-node=2" in out
    assert "--module automodel.recipes.llm.finetune" in out and f"-c {workdir}/slurm_jobs/llm_finetune_" in out
    assert "# then run: sbatch --parsable --export=ALL" in out
    assert list(workdir.iterdir()) == []


def test_slurm_submit_writes_the_job_dir_and_reports_it(capsys, cfg, workdir, tmp_path, monkeypatch):
    fake_tool(tmp_path, monkeypatch, "sbatch", f'echo "$@" > {tmp_path}/sbatch.args\necho 77\n')
    monkeypatch.setenv("WANDB_API_KEY", "wandb-sentinel-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-sentinel-secret")
    monkeypatch.setenv("MY_LR", "0.002")
    cfg.write_text(cfg.read_text().replace("lr: 3e-3", "lr: ${MY_LR}"))
    code, out, _ = run_cli(
        capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM)), "--step_scheduler.max_steps", "9"
    )
    assert code == 0
    job_dir = next((workdir / "slurm_jobs").iterdir())
    assert job_dir.name.startswith("llm_finetune_")
    assert "Submitted SLURM job 77 (llm_finetune: 1 node(s) x 2 process(es))" in out
    assert f"stdout:  {job_dir}/77.out" in out and f"stderr:  {job_dir}/77.err" in out
    assert "WANDB_API_KEY, HF_TOKEN: passed to the job's environment from yours, not written to any file" in out
    job_config = yaml.safe_load((job_dir / "config.yaml").read_text())
    assert "slurm" not in job_config and job_config["step_scheduler"]["max_steps"] == 9  # overrides baked in
    assert job_config["optimizer"]["lr"] == "${MY_LR}"  # placeholders kept
    assert (tmp_path / "sbatch.args").read_text().split()[-1] == str(job_dir / "sbatch.sh")
    for path in job_dir.iterdir():
        assert "sentinel-secret" not in path.read_text(), path


def test_sbatch_missing_is_one_error_and_nothing_written(capsys, cfg, workdir, monkeypatch):
    monkeypatch.setenv("PATH", str(workdir / "no-bin"))
    line = expect_user_error(capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM)))
    assert "sbatch: not found on PATH" in line
    assert list(workdir.iterdir()) == []


def test_config_is_validated_for_the_jobs_world_size_before_anything_is_written(capsys, cfg, workdir):
    # 2 nodes x 2 processes: global batch 4 is not a multiple of local batch 2 x 4 ranks.
    section = SLURM.replace("nodes: 1", "nodes: 2")
    line = expect_user_error(capsys, "llm", "finetune", "-c", str(with_section(cfg, section)))
    assert "global_batch_size(4) must be a multiple of local_batch_size(2) x data-parallel size(4)" in line
    assert list(workdir.iterdir()) == []


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (SLURM.replace('"00:30:00"', '"half an hour"'), "slurm.time: 'half an hour' is not a SLURM time limit"),
        (SLURM.replace('"00:30:00"', "1:30:00"), "slurm.time: got the number 5400"),
        (SLURM.replace("nodes: 1", "nodes: 0"), "slurm.nodes: expected an integer >= 1, got 0"),
        (SLURM + "  container_image: img\n  extra_mounts: [/does/not/exist:/data]\n", "mount source /does/not/exist"),
        (SLURM + "  partitions: x\n", "slurm.partitions: unknown key (did you mean 'partition'?)"),
        ("slurm: true\n", "slurm: expected a mapping of launcher settings"),
    ],
)
def test_bad_slurm_sections(capsys, cfg, workdir, section, message):
    line = expect_user_error(capsys, "llm", "finetune", "-c", str(with_section(cfg, section)), "--dry-run")
    assert message in line, line


def test_nproc_flag_conflicting_with_the_section(capsys, cfg, workdir):
    line = expect_user_error(
        capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM)), "--nproc-per-node", "4", "--dry-run"
    )
    assert "slurm.ntasks_per_node is 2 but --nproc-per-node is 4" in line


def test_slurm_and_k8s_together(capsys, cfg, workdir):
    line = expect_user_error(capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM + K8S)), "--dry-run")
    assert "slurm and k8s" in line and "not both" in line


def test_requeue_without_checkpointing_warns(capsys, cfg, workdir, caplog):
    cfg.write_text(cfg.read_text().replace("enabled: true", "enabled: false"))
    code, _, _ = run_cli(capsys, "llm", "finetune", "-c", str(with_section(cfg, SLURM)), "--dry-run")
    assert code == 0 and "requeued after pre-emption will start over from step 0" in caplog.text


def test_newer_grammar_with_a_slurm_section(capsys, cfg, workdir):
    cfg.write_text("recipe: llm_finetune\n" + cfg.read_text())
    code, out, _ = run_cli(capsys, str(with_section(cfg, SLURM)), "--dry-run")
    assert code == 0 and "--module automodel.recipes.llm.finetune" in out


# --- Kubernetes ----------------------------------------------------------------------------------------------------
def test_k8s_dry_run_prints_the_manifests(capsys, cfg, workdir):
    cfg.write_text(cfg.read_text().replace("global_batch_size: 4", "global_batch_size: 8"))
    code, out, _ = run_cli(capsys, "llm", "finetune", "-c", str(with_section(cfg, K8S)), "--dry-run")
    assert code == 0
    manifests = [m for m in yaml.safe_load_all(out) if m]
    assert [m["kind"] for m in manifests] == ["ConfigMap", "Service", "Job"]
    job_config = yaml.safe_load(manifests[0]["data"]["config.yaml"])
    assert "k8s" not in job_config and job_config["step_scheduler"]["global_batch_size"] == 8
    assert manifests[2]["spec"]["completions"] == 2
    assert list(workdir.iterdir()) == []


def test_k8s_apply_with_kubectl(capsys, cfg, workdir, tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))  # the Python client finds no cluster
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    fake_tool(tmp_path, monkeypatch, "kubectl", f'echo "$@" > {tmp_path}/kubectl.args\n')
    cfg.write_text(cfg.read_text().replace("global_batch_size: 4", "global_batch_size: 8"))
    code, out, _ = run_cli(capsys, "llm", "finetune", "-c", str(with_section(cfg, K8S)))
    assert code == 0
    manifest = workdir / "k8s_jobs" / "sft-test" / "manifest.yaml"
    assert (tmp_path / "kubectl.args").read_text().split() == ["apply", "-f", str(manifest)]
    assert "Created Kubernetes job sft-test in namespace default with kubectl" in out
    assert "kubectl -n default logs -f -l job-name=sft-test" in out


def test_k8s_checkpoint_outside_a_volume_warns(capsys, cfg, workdir, caplog):
    cfg.write_text(cfg.read_text().replace("global_batch_size: 4", "global_batch_size: 8"))
    code, _, _ = run_cli(capsys, "llm", "finetune", "-c", str(with_section(cfg, K8S)), "--dry-run")
    assert code == 0 and "is not on a k8s.volumes mount" in caplog.text


def test_k8s_needs_an_image(capsys, cfg, workdir):
    line = expect_user_error(capsys, "llm", "finetune", "-c", str(with_section(cfg, "k8s:\n  nodes: 1\n")), "--dry-run")
    assert "k8s.image: required" in line


# --- SLURM for real: a one-node cluster on localhost (see components/launcher/tests/test_slurm_real.py) ------------
@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    with local_slurm() as cluster:
        yield cluster


def submit_for_real(cluster: LocalSlurm, cfg: Path, env: dict[str, str]) -> str:
    """`automodel llm finetune -c cfg` from the repository root (a checkout: the job runs this code)."""
    result = subprocess.run(
        [sys.executable, "-m", "automodel", "llm", "finetune", "-c", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**cluster.env, **env},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    submitted = re.search(r"Submitted SLURM job (\d+)", result.stdout)
    assert submitted, result.stdout
    job_id = submitted.group(1)
    cluster.job_ids.append(job_id)
    assert re.search(rf"stdout: +\S+/{job_id}\.out", result.stdout), result.stdout
    return job_id


def slurm_config(tmp_path: Path, model_dir: Path, job_dir: Path, **step_scheduler: int) -> Path:
    # The checkpoint dir is a placeholder: it only resolves if the job inherits the submitting environment.
    cfg = write_config(tmp_path / "cfg.yaml", model_dir, "${AUTOMODEL_TEST_CKPT}")  # type: ignore[arg-type]
    data = yaml.safe_load(cfg.read_text())
    data["step_scheduler"].update(step_scheduler)
    data["slurm"] = {"ntasks_per_node": 2, "time": "00:10:00", "partition": "debug", "job_dir": str(job_dir)}
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def logs(job_dir: Path, job_id: str) -> tuple[str, str]:
    return (job_dir / f"{job_id}.out").read_text(), (job_dir / f"{job_id}.err").read_text()


@pytest.mark.slow
def test_slurm_for_real_two_process_finetune(slurm, tiny_model_dir, tmp_path):
    job_dir, ckpt = tmp_path / "job", tmp_path / "ckpt"
    secrets = {"WANDB_API_KEY": f"wandb-{uuid.uuid4().hex}", "HF_TOKEN": f"hf_{uuid.uuid4().hex}"}
    cfg = slurm_config(tmp_path, tiny_model_dir, job_dir)
    job_id = submit_for_real(slurm, cfg, {"AUTOMODEL_TEST_CKPT": str(ckpt), **secrets})

    info = slurm.wait_done(job_id)
    out, err = logs(job_dir, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}\n{err}"
    assert f"automodel: job {job_id} (restart 0)" in out
    assert "step 6/6" in err and "over 2 ranks" in err, out + err
    assert (ckpt / "LATEST").read_text().strip() == "epoch_0_step_6"
    assert (ckpt / "epoch_0_step_6" / "model" / "model.safetensors").is_file()
    # The job dir holds the config without its slurm: section, with the placeholder kept.
    job_config = (job_dir / "config.yaml").read_text()
    assert "slurm:" not in job_config and "${AUTOMODEL_TEST_CKPT}" in job_config
    # Secrets reached the job through the environment only: no file the job wrote holds them.
    for path in [*job_dir.rglob("*"), *ckpt.rglob("*")]:
        if path.is_file() and path.suffix not in (".safetensors", ".pt"):
            text = path.read_text(errors="replace")
            assert all(value not in text for value in secrets.values()), path


@pytest.mark.slow
def test_slurm_for_real_preemption_saves_requeues_and_resumes_from_latest(slurm, tiny_model_dir, tmp_path):
    job_dir, ckpt = tmp_path / "job", tmp_path / "ckpt"
    steps = 150
    # Long enough to be interrupted; only the pre-emption and the last step write checkpoints.
    cfg = slurm_config(
        tmp_path, tiny_model_dir, job_dir, max_steps=steps, num_epochs=100, val_every_steps=1000, ckpt_every_steps=1000
    )
    job_id = submit_for_real(slurm, cfg, {"AUTOMODEL_TEST_CKPT": str(ckpt)})

    metrics = ckpt / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, f"training never started: {slurm.job(job_id)}"
        assert slurm.job(job_id).get("JobState") not in TERMINAL_STATES, logs(job_dir, job_id)
        time.sleep(0.2)
    # What SLURM does `signal_before_s` before the time limit (#SBATCH --signal=B:USR1@...): USR1 to the batch shell.
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, env=slurm.env)

    slurm.wait(job_id, lambda i: i.get("Restarts") == "1", 120, "requeued")
    # SLURM holds the requeued job until the old run's credential expires (cred_expire=10 in local_slurm).
    info = slurm.wait_done(job_id)
    out, err = logs(job_dir, job_id)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}\n{err}\n{slurm.daemon_logs()}"
    assert "SIGUSR1: asking the ranks to save a checkpoint" in out and "requeueing job" in out, out
    assert f"automodel: job {job_id} (restart 1)" in out, out
    stopped = re.search(r"Stopping after step (\d+) because a shutdown signal arrived", err)
    resumed = re.search(r"Resumed from (\S+) at step (\d+)", err)
    assert stopped and resumed, err
    step = int(stopped.group(1))
    assert 0 < step < steps and int(resumed.group(2)) == step
    assert Path(resumed.group(1)).parent == ckpt and resumed.group(1).endswith(f"_step_{step}")
    assert Path(resumed.group(1), "train_state.json").is_file()
    assert (ckpt / "LATEST").read_text().strip().endswith(f"_step_{steps}")
    # Every step ran exactly once across the two runs.
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    logged = [row["step"] for row in rows if row.get("split") == "train"]
    assert sorted(logged) == list(range(1, steps + 1)), logged
