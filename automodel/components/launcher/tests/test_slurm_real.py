"""SLURM for real: munged, slurmctld and slurmd on localhost (a config in a temp dir; the system's is untouched).

`local_slurm()` installs Debian's slurm-wlm and munge when they are missing (as root, with apt-get: CI), or skips
saying why; it stops every daemon it started, by PID. The test here submits a 2-rank job through the launcher's
API with a stand-in recipe and pre-empts it; automodel/cli/tests/test_remote.py runs real fine-tunes on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from automodel.components.launcher import SlurmConfig, build_slurm_job, submit_slurm_job

pytestmark = pytest.mark.slow
SBIN = Path("/usr/sbin")
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


# --- installation ----------------------------------------------------------------------------------------------------
def _installed() -> bool:
    return all(shutil.which(t) for t in ("sbatch", "squeue", "scontrol", "scancel")) and all(
        (SBIN / d).exists() for d in ("munged", "slurmctld", "slurmd")
    )


def _ensure_slurm() -> None:
    """Install slurm-wlm + munge when missing; skip (with the reason) only when that is impossible."""
    if _installed():
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM cannot be installed: not running as root (apt-get install slurm-wlm munge needs root)")
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM cannot be installed: apt-get not found (Debian's slurm-wlm and munge are needed)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # stale package lists: refresh once
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0 or not _installed():
        pytest.fail(f"apt-get install slurm-wlm munge failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a one-node cluster --------------------------------------------------------------------------------------------
class LocalSlurm:
    """munged + slurmctld + slurmd on localhost, configured in `root` (its own munge socket, ports and spool)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pid_files = [root / "munge" / "munged.pid", root / "slurmctld.pid", root / "slurmd.pid"]
        self.job_ids: list[str] = []

    def start(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        shutil.chown(munge, "munge", "munge")
        shutil.chown(key, "munge", "munge")
        socket_path = munge / "munge.socket"
        self._run(
            ["runuser", "-u", "munge", "--", str(SBIN / "munged"), f"--socket={socket_path}", f"--key-file={key}",
             f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
             f"--seed-file={munge / 'munged.seed'}"]
        )  # fmt: skip
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        self.conf.write_text(
            f"""ClusterName=automodeltest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path},cred_expire=10
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=600
KillWait=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
        self._run([str(SBIN / "slurmctld"), "-f", str(self.conf)])
        self._run([str(SBIN / "slurmd"), "-f", str(self.conf), "-N", self.node])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env)
            if state.stdout.strip() == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"the SLURM node never became idle:\n{self.daemon_logs()}")

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, env=self.env, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr}\n{self.daemon_logs()}")

    def daemon_logs(self) -> str:
        logs = [*sorted((self.root / "log").glob("*.log")), self.root / "munge" / "munged.log"]
        return "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs if p.exists())

    def stop(self) -> None:
        """Cancel our jobs, then stop every daemon we started, by PID."""
        for job_id in self.job_ids:
            subprocess.run(["scancel", job_id], capture_output=True, env=self.env)
        deadline = time.monotonic() + 45
        while self.job_ids and time.monotonic() < deadline:
            if all(self.job(j).get("JobState") in TERMINAL_STATES for j in self.job_ids):
                break
            time.sleep(0.5)
        _terminate([int(p.read_text().split()[0]) for p in self.pid_files if p.exists()])

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, env=self.env
        ).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, condition, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if condition(info):
                return info
            time.sleep(0.5)
        raise AssertionError(f"job {job_id} not {what} after {timeout}s: {self.job(job_id)}\n{self.daemon_logs()}")

    def wait_done(self, job_id: str, timeout: float = 300) -> dict[str, str]:
        return self.wait(job_id, lambda i: i.get("JobState") in TERMINAL_STATES, timeout, "finished")


def _terminate(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL whatever is still alive after 15 s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                alive.append(pid)
        if not alive:
            return
        time.sleep(0.2)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def local_slurm() -> Iterator[LocalSlurm]:
    """A running one-node cluster; everything started is stopped on exit."""
    _ensure_slurm()
    # Not pytest's tmp_path: munged insists that its socket directory's parents are searchable by everyone.
    root = Path(tempfile.mkdtemp(prefix="automodel-slurm-"))
    root.chmod(0o755)
    cluster = LocalSlurm(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm() -> Iterator[LocalSlurm]:
    with local_slurm() as cluster:
        yield cluster


# --- a 2-rank job with a stand-in recipe, pre-empted and requeued ---------------------------------------------------
STUB_RECIPE = """
import hashlib, json, os, signal, sys, time
out, rank = os.environ["STUB_OUT"], os.environ["RANK"]
restart = os.environ.get("SLURM_RESTART_COUNT", "0")
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
seen = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
seen["config"] = open(sys.argv[sys.argv.index("-c") + 1]).read()
seen["wandb_sha"] = hashlib.sha256(os.environ.get("WANDB_API_KEY", "").encode()).hexdigest()
json.dump(seen, open(f"{out}/ready_{restart}_{rank}", "w"))
if restart == "0":  # wait for the pre-emption warning, then "save a checkpoint"
    deadline = time.monotonic() + 120
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    open(f"{out}/{'saved' if got else 'timeout'}_{rank}", "w").close()
    sys.exit(0 if got else 3)
open(f"{out}/done_{rank}", "w").close()
"""


def test_two_ranks_preempted_requeued_and_restarted(slurm, tmp_path, monkeypatch):
    stub_dir, out, job_dir = tmp_path / "stub", tmp_path / "out", tmp_path / "job"
    stub_dir.mkdir()
    out.mkdir()
    (stub_dir / "stub_recipe.py").write_text(STUB_RECIPE)
    secret = f"wandb-{os.urandom(8).hex()}"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.setenv("SLURM_CONF", slurm.env["SLURM_CONF"])
    config = SlurmConfig(
        job_name="stub",
        ntasks_per_node=2,
        time="00:10:00",
        partition="debug",
        job_dir=str(job_dir),
        env_vars={"PYTHONPATH": str(stub_dir), "STUB_OUT": str(out)},
    )
    job = build_slurm_job(
        config, config_text="stub: true\n", recipe_module="stub_recipe", nproc_per_node=2, checkout=None, cwd=tmp_path
    )
    job_id = submit_slurm_job(job)
    slurm.job_ids.append(job_id)

    wait_for(lambda: all((out / f"ready_0_{r}").exists() for r in (0, 1)), 120, lambda: slurm.job(job_id))
    subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True, env=slurm.env)
    slurm.wait(job_id, lambda i: i.get("Restarts") == "1", 60, "requeued")
    # SLURM holds a requeued job until the old run's credential expires (cred_expire=10 here); starting it earlier
    # (`scontrol update StartTime=now`) makes slurmd refuse it ("Job credential revoked") and the job FAILED.
    info = slurm.wait_done(job_id, timeout=120)

    stdout, stderr = (job_dir / f"{job_id}.out").read_text(), (job_dir / f"{job_id}.err").read_text()
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{stdout}\n{stderr}"
    assert sorted(p.name for p in out.iterdir()) == [
        "done_0", "done_1", "ready_0_0", "ready_0_1", "ready_1_0", "ready_1_1", "saved_0", "saved_1"
    ], stdout + stderr  # fmt: skip
    assert "SIGUSR1: asking the ranks" in stdout and f"requeueing job {job_id}" in stdout
    seen = [json.loads((out / f"ready_0_{r}").read_text()) for r in (0, 1)]
    assert [s["RANK"] for s in seen] == ["0", "1"] and {s["WORLD_SIZE"] for s in seen} == {"2"}
    assert all(s["config"] == "stub: true\n" for s in seen)
    # The secret reached the ranks through the environment, and no file of the job holds it.
    assert {s["wandb_sha"] for s in seen} == {hashlib.sha256(secret.encode()).hexdigest()}
    assert all(secret not in p.read_text() for p in job_dir.iterdir())


def wait_for(condition: Callable[[], bool], timeout: float, state: Callable[[], object]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out; job: {state()}"
        time.sleep(0.2)
