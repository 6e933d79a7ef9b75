"""SLURM batch jobs: the `slurm:` section, the generated `sbatch.sh`, and submission with `sbatch`.

One task per node runs torchrun, which starts that node's ranks; the ranks meet through a c10d rendezvous on the
first node. Pre-emption: SLURM sends SIGUSR1 to the batch shell `signal_before_s` before the time limit, the shell
passes it to every process of the training step (the ranks save a checkpoint and exit), then requeues the job,
which resumes from the checkpoint's `LATEST`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time as time_module
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from automodel.components.launcher._sbatch import Mount, render_sbatch_script
from automodel.components.launcher._settings import LaunchError, Problems, settings_from_mapping

logger = logging.getLogger(__name__)

# The formats `sbatch --time` accepts (besides a bare number of minutes written as text).
_TIME_FORMATS = (
    re.compile(r"^(?P<m>\d+)$"),  # MM
    re.compile(r"^(?P<m>\d+):(?P<s>\d+)$"),  # MM:SS
    re.compile(r"^(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"),  # HH:MM:SS
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+)$"),  # D-HH
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+)$"),  # D-HH:MM
    re.compile(r"^(?P<d>\d+)-(?P<h>\d+):(?P<m>\d+):(?P<s>\d+)$"),  # D-HH:MM:SS
)
_UNLIMITED = {"INFINITE", "UNLIMITED"}
_JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
DEFAULT_SIGNAL_BEFORE_S = 300
MIN_SIGNAL_BEFORE_S = 30


def parse_slurm_time(value: Any, key: str = "slurm.time") -> int | None:
    """Seconds of a SLURM time limit (None for INFINITE / UNLIMITED); a bad format raises a LaunchError."""
    formats = "MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS"
    if isinstance(value, bool) or not isinstance(value, str):
        # YAML reads an unquoted 1:30:00 as the base-60 number 5400, which SLURM would take as 5400 minutes.
        raise LaunchError(
            f"{key}: got the number {value!r}; write the time limit as a quoted string ({formats}), "
            f'e.g. time: "01:30:00" (unquoted, YAML turns 1:30:00 into 5400)'
        )
    text = value.strip()
    if text.upper() in _UNLIMITED:
        return None
    for pattern in _TIME_FORMATS:
        match = pattern.match(text)
        if match:
            parts = {k: int(v) for k, v in match.groupdict().items() if v is not None}
            if ("s" in parts and parts["s"] >= 60) or (
                "m" in parts and ("h" in parts or "d" in parts) and parts["m"] >= 60
            ):
                break
            if "d" in parts and parts.get("h", 0) >= 24:
                break
            seconds = parts.get("d", 0) * 86400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
            if seconds > 0:
                return seconds
            break
    raise LaunchError(f'{key}: {value!r} is not a SLURM time limit; use {formats} (e.g. "04:00:00" or "1-00:00:00")')


@dataclass
class SlurmConfig:
    """The `slurm:` section of a config (docs/launchers.md has a worked example)."""

    job_name: str = "automodel"
    nodes: int = 1
    ntasks_per_node: int | None = None  # training processes (ranks) per node; default gpus_per_node, else 1
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None  # CPU cores for each node's torchrun and its ranks; default: SLURM's
    time: str | None = None
    account: str | None = None
    partition: str | None = None
    container_image: str | None = None  # a registry image or a .sqsh file, run through pyxis
    extra_mounts: list[str] = field(default_factory=list)  # "src:dst[:flags]" container bind mounts
    env_vars: dict[str, Any] = field(default_factory=dict)
    hf_home: str | None = None
    job_dir: str | None = None  # default slurm_jobs/<job_name>_<timestamp>
    master_port: int | None = None  # default 20000 + job id % 20000, so jobs sharing a node do not collide
    python: str | None = None  # default: this interpreter, or `python` inside a container
    # seconds between SLURM's pre-emption warning and the time limit; default: a tenth of `time`, 30 to 300 s
    signal_before_s: int | None = None
    requeue: bool = True
    extra_sbatch_args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        problems = Problems("slurm")
        if not isinstance(self.job_name, str) or not _JOB_NAME.match(self.job_name):
            problems.add("job_name", f"expected letters, digits, '.', '_' or '-', got {self.job_name!r}")
        problems.check_int("nodes", self.nodes, minimum=1)
        for key in ("ntasks_per_node", "gpus_per_node", "cpus_per_task"):
            problems.check_int(key, getattr(self, key), minimum=1, optional=True)
        problems.check_int("master_port", self.master_port, minimum=1, optional=True)
        if isinstance(self.master_port, int) and self.master_port > 65535:
            problems.add("master_port", f"expected a TCP port (1-65535), got {self.master_port}")
        explicit_signal = self.signal_before_s is not None
        if not explicit_signal:
            self.signal_before_s = self._default_signal_before_s()
        problems.check_int("signal_before_s", self.signal_before_s, minimum=1)
        if isinstance(self.signal_before_s, int) and self.signal_before_s > 65535:
            problems.add("signal_before_s", f"SLURM allows at most 65535 seconds, got {self.signal_before_s}")
        for key in ("account", "partition", "container_image", "hf_home", "job_dir", "python"):
            problems.check_str(key, getattr(self, key))
        if not isinstance(self.requeue, bool):
            problems.add("requeue", f"expected true or false, got {self.requeue!r}")
        problems.check_list_of_str("extra_mounts", self.extra_mounts)
        problems.check_list_of_str("extra_sbatch_args", self.extra_sbatch_args)
        if isinstance(self.extra_sbatch_args, (list, tuple)):
            for arg in self.extra_sbatch_args:
                if isinstance(arg, str) and not arg.startswith("-"):
                    problems.add("extra_sbatch_args", f"{arg!r} is not an sbatch option (e.g. --exclusive, --mem=0)")
        problems.check_env(
            "env_vars",
            self.env_vars,
            allow_placeholders=True,
            secrets_hint="export it in your shell instead (the job inherits your environment) or write "
            "${NAME} to expand it when the job runs",
        )
        if self.time is not None:
            try:
                limit = parse_slurm_time(self.time)
            except LaunchError as err:
                problems.items.append(str(err))
            else:
                if (
                    explicit_signal
                    and limit is not None
                    and isinstance(self.signal_before_s, int)
                    and limit <= self.signal_before_s
                ):
                    problems.add(
                        "signal_before_s",
                        f"the pre-emption warning ({self.signal_before_s}s before the end) would come before the job "
                        f"starts: time {self.time!r} is only {limit}s; lower signal_before_s or raise time",
                    )
        problems.raise_if_any()

    def _default_signal_before_s(self) -> int:
        """300 s, or a tenth of a shorter job's time limit (at least 30 s), so a 5-minute job is not refused."""
        try:
            limit = parse_slurm_time(self.time) if self.time is not None else None
        except LaunchError:
            limit = None  # reported by __post_init__
        if limit is None or limit >= 3000:
            return DEFAULT_SIGNAL_BEFORE_S
        chosen = max(MIN_SIGNAL_BEFORE_S, limit // 10)
        logger.info(
            "slurm.signal_before_s: the job's time limit is %ss, so the pre-emption warning comes %ss before it "
            "(a tenth of the limit; set signal_before_s to choose)",
            limit,
            chosen,
        )
        return chosen

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, job_name: str = "automodel") -> SlurmConfig:
        """Build from a config section; `job_name` is the default when the section has none."""
        return settings_from_mapping(cls, data, "slurm", job_name=job_name)

    def processes_per_node(self, cli_nproc: int | None = None) -> int:
        """Ranks per node: ntasks_per_node, else `--nproc-per-node`, else gpus_per_node, else 1."""
        if cli_nproc is not None and self.ntasks_per_node is not None and cli_nproc != self.ntasks_per_node:
            raise LaunchError(
                f"slurm.ntasks_per_node is {self.ntasks_per_node} but --nproc-per-node is {cli_nproc}; "
                "drop one of them (both set the number of training processes per node)"
            )
        return self.ntasks_per_node or cli_nproc or self.gpus_per_node or 1


@dataclass(frozen=True)
class SlurmJob:
    """A job ready to be written and submitted: its directory, `sbatch.sh` and `config.yaml` texts."""

    job_dir: Path
    script: str
    config_text: str
    container: bool
    hf_home: Path | None

    @property
    def script_path(self) -> Path:
        return self.job_dir / "sbatch.sh"

    @property
    def config_path(self) -> Path:
        return self.job_dir / "config.yaml"

    def log_paths(self, job_id: str) -> tuple[Path, Path]:
        """(stdout, stderr) log files of a submitted job."""
        return self.job_dir / f"{job_id}.out", self.job_dir / f"{job_id}.err"


def build_slurm_job(
    config: SlurmConfig,
    *,
    config_text: str,
    recipe_module: str,
    nproc_per_node: int,
    checkout: Path | None,
    cwd: Path | None = None,
    timestamp: str | None = None,
) -> SlurmJob:
    """Render the job (nothing is written). `checkout`: a project checkout whose code the job runs, or None for
    the installed package. Mount sources must exist."""
    cwd = (cwd or Path.cwd()).resolve()
    stamp = timestamp or time_module.strftime("%Y%m%d_%H%M%S")
    job_dir = _absolute(config.job_dir, cwd) if config.job_dir else cwd / "slurm_jobs" / f"{config.job_name}_{stamp}"
    hf_home = _absolute(config.hf_home, cwd) if config.hf_home else None
    container = config.container_image is not None
    mounts: list[Mount] = []
    if container:
        _check_image(config.container_image or "", cwd)
        for path in (checkout, job_dir, cwd, hf_home):
            if path is not None:
                mounts.append(Mount(str(path), str(path)))
        mounts += [_parse_mount(entry, i, cwd) for i, entry in enumerate(config.extra_mounts)]
    elif config.extra_mounts:
        logger.warning("slurm.extra_mounts is ignored: it only applies with slurm.container_image")
    python = config.python or ("python" if container else sys.executable)
    script = render_sbatch_script(
        config,
        job_dir=job_dir,
        config_file=job_dir / "config.yaml",
        recipe_module=recipe_module,
        nproc_per_node=nproc_per_node,
        python=python,
        workdir=cwd,
        checkout=checkout,
        hf_home=hf_home,
        mounts=_dedupe(mounts),
    )
    return SlurmJob(job_dir=job_dir, script=script, config_text=config_text, container=container, hf_home=hf_home)


def submit_slurm_job(job: SlurmJob, *, sbatch: str | None = None) -> str:
    """Write the job directory and submit it with `sbatch --parsable`; return the job id.

    `sbatch` missing is reported before anything is written. Secrets (WANDB_API_KEY, HF_TOKEN...) reach the job
    through the environment sbatch inherits (`--export=ALL`), never through a file.
    """
    sbatch = sbatch or shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError(
            "sbatch: not found on PATH, so the slurm: section cannot be submitted from this machine; run from a "
            "SLURM login node, or remove the slurm: section to train here (--dry-run prints the batch script)"
        )
    job.job_dir.mkdir(parents=True, exist_ok=True)
    if job.container and job.hf_home is not None:
        job.hf_home.mkdir(parents=True, exist_ok=True)  # pyxis cannot bind-mount a missing directory
    job.config_path.write_text(job.config_text)
    job.script_path.write_text(job.script)
    job.script_path.chmod(0o755)
    command = [sbatch, "--parsable", "--export=ALL", str(job.script_path)]
    logger.info("Submitting: %s", " ".join(command))
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise LaunchError(f"sbatch refused {job.script_path} (exit {result.returncode}): {detail}")
    job_id = result.stdout.strip().splitlines()[-1].split(";")[0] if result.stdout.strip() else ""
    if not job_id.isdigit():
        raise LaunchError(f"sbatch printed no job id for {job.script_path}: {result.stdout!r}")
    return job_id


# --- helpers -------------------------------------------------------------------------------------------------------
def _absolute(path: str, cwd: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else cwd / p


def _check_image(image: str, cwd: Path) -> None:
    """A .sqsh (or path-like) image must exist; a registry image is pulled by pyxis on the nodes."""
    if image.endswith((".sqsh", ".squashfs")) or image.startswith(("/", "./", "../", "~")):
        path = _absolute(image, cwd)
        if not path.exists():
            raise LaunchError(
                f"slurm.container_image: {image!r} looks like a squashfs file but {path} does not exist; "
                "give an existing .sqsh path (on a filesystem the nodes share) or a registry image like "
                "nvcr.io#nvidia/pytorch:25.01-py3"
            )


def _parse_mount(entry: str, index: int, cwd: Path) -> Mount:
    key = f"slurm.extra_mounts[{index}]"
    parts = entry.split(":")
    if len(parts) > 3 or not all(parts):
        raise LaunchError(f"{key}: {entry!r} is not a mount; write SRC:DST or SRC:DST:FLAGS (e.g. /data:/data:ro)")
    src = _absolute(parts[0], cwd)
    dst = parts[1] if len(parts) > 1 else str(src)
    if not src.exists():
        raise LaunchError(
            f"{key}: the mount source {src} does not exist on this machine; fix the path (sources must exist on "
            "a filesystem the nodes share) or remove the mount"
        )
    if not dst.startswith("/"):
        raise LaunchError(f"{key}: the mount destination {dst!r} must be an absolute path inside the container")
    return Mount(str(src), dst, parts[2] if len(parts) == 3 else None)


def _dedupe(mounts: list[Mount]) -> list[Mount]:
    """Drop repeated mounts and identity mounts already covered by an identity mount of a parent directory."""
    identity = [m.src for m in mounts if m.src == m.dst and m.flags is None]
    kept: list[Mount] = []
    for mount in mounts:
        covered = (
            mount.src == mount.dst
            and mount.flags is None
            and any(parent != mount.src and Path(mount.src).is_relative_to(parent) for parent in identity)
        )
        if not covered and mount not in kept:
            kept.append(mount)
    return kept


__all__ = ["SlurmConfig", "SlurmJob", "build_slurm_job", "parse_slurm_time", "submit_slurm_job"]
