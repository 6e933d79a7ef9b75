"""`automodel llm finetune -c CONFIG` when the config has a `slurm:` or `k8s:` section: validate the rest of the
config for the job's world size, then submit a batch job (or, with --dry-run, print what would be submitted)."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from automodel.components.config import ConfigError, ConfigNode
from automodel.components.launcher import (
    K8sConfig,
    SlurmConfig,
    apply_k8s_manifests,
    build_slurm_job,
    default_k8s_job_name,
    find_checkout,
    k8s_follow_commands,
    k8s_job_dir,
    manifests_to_yaml,
    render_k8s_manifests,
    submit_slurm_job,
)

logger = logging.getLogger(__name__)

PASSTHROUGH_SECRETS = ("WANDB_API_KEY", "HF_TOKEN")


def launch(
    kind: str,
    section: Any,
    cfg: ConfigNode,
    *,
    config_path: Path | str,
    domain: str,
    command: str,
    extra: Sequence[str] = (),
    nproc_per_node: int | None = None,
    dry_run: bool = False,
) -> int:
    """Submit `cfg` (the config without its launcher section) as a `kind` ("slurm" | "k8s") job; return 0.

    The CLI overrides in `extra` are already applied to `cfg`, so the job's config.yaml carries them.
    """
    recipe_module = f"automodel.recipes.{domain}.{command}"
    if section is not None and not isinstance(section, ConfigNode):
        raise ConfigError(f"{kind}: expected a mapping of launcher settings, got {section!r} (in {config_path})")
    if kind == "slurm":
        return _launch_slurm(section, cfg, recipe_module, domain, command, nproc_per_node, dry_run)
    if kind == "k8s":
        return _launch_k8s(section, cfg, recipe_module, domain, command, nproc_per_node, dry_run)
    raise ConfigError(f"{kind}: not a launcher; use a slurm: or a k8s: section")


def _validate_recipe(recipe_module: str, cfg: ConfigNode, world_size: int) -> None:
    # Before anything is written or submitted: a job that fails on a config typo after queueing for hours helps nobody.
    importlib.import_module(recipe_module).validate(cfg, world_size=world_size)


# --- SLURM ---------------------------------------------------------------------------------------------------------
def _launch_slurm(
    section: ConfigNode | None,
    cfg: ConfigNode,
    recipe_module: str,
    domain: str,
    command: str,
    nproc_per_node: int | None,
    dry_run: bool,
) -> int:
    data = section.to_dict() if section is not None else {}
    if section is not None and isinstance(section.get("env_vars"), ConfigNode):
        # Placeholders stay placeholders: the script expands ${VAR} when the job runs, so no secret is written.
        data["env_vars"] = section["env_vars"].to_dict(raw=True)
    config = SlurmConfig.from_dict(data, job_name=f"{domain}_{command}")
    nproc = config.processes_per_node(nproc_per_node)
    _validate_recipe(recipe_module, cfg, config.nodes * nproc)
    if config.requeue and not cfg.get("checkpoint.enabled", False):
        logger.warning(
            "checkpoint.enabled is not true: a job requeued after pre-emption will start over from step 0; "
            "enable checkpointing so it resumes from LATEST"
        )
    job = build_slurm_job(
        config,
        config_text=cfg.to_yaml(),
        recipe_module=recipe_module,
        nproc_per_node=nproc,
        checkout=find_checkout(Path.cwd()),
    )
    if dry_run:
        print(job.script)
        print(f"# would write {job.config_path} (the config without its slurm: section) and {job.script_path},")
        print(f"# then run: sbatch --parsable --export=ALL {job.script_path}")
        return 0
    job_id = submit_slurm_job(job)
    out, err = job.log_paths(job_id)
    print(f"Submitted SLURM job {job_id} ({config.job_name}: {config.nodes} node(s) x {nproc} process(es))")
    print(f"  job dir: {job.job_dir}")
    print(f"  stdout:  {out}")
    print(f"  stderr:  {err}")
    print(f"  follow:  tail -f {out} {err}    status: squeue -j {job_id}    cancel: scancel {job_id}")
    _print_passthrough("the job's environment")
    return 0


# --- Kubernetes ----------------------------------------------------------------------------------------------------
def _launch_k8s(
    section: ConfigNode | None,
    cfg: ConfigNode,
    recipe_module: str,
    domain: str,
    command: str,
    nproc_per_node: int | None,
    dry_run: bool,
) -> int:
    config = K8sConfig.from_dict(
        section.to_dict() if section is not None else {}, job_name=default_k8s_job_name(domain, command)
    )
    nproc = config.processes_per_node(nproc_per_node)
    _validate_recipe(recipe_module, cfg, config.nodes * nproc)
    _check_checkpoint_on_volume(cfg, config)
    manifests = render_k8s_manifests(
        config, config_text=cfg.to_yaml(), recipe_module=recipe_module, nproc_per_node=nproc
    )
    text = manifests_to_yaml(manifests)
    if dry_run:
        print(text)
        print(f"# would apply these manifests (job {config.job_name} in namespace {config.namespace})")
        return 0
    job_dir = k8s_job_dir(config)
    job_dir.mkdir(parents=True, exist_ok=True)
    manifest_path = job_dir / "manifest.yaml"
    manifest_path.write_text(text)
    used = apply_k8s_manifests(manifests, manifest_path, namespace=config.namespace)
    print(f"Created Kubernetes job {config.job_name} in namespace {config.namespace} with {used}")
    print(f"  manifest: {manifest_path}")
    for line in k8s_follow_commands(config):
        print(f"  {line}")
    return 0


def _check_checkpoint_on_volume(cfg: ConfigNode, config: K8sConfig) -> None:
    """A checkpoint written inside a pod's own filesystem is lost with the pod: it must live on a volume."""
    if not cfg.get("checkpoint.enabled", False):
        return
    checkpoint_dir = str(cfg.get("checkpoint.checkpoint_dir", "checkpoints"))
    if not checkpoint_dir.startswith("/") and config.workdir:
        checkpoint_dir = os.path.join(config.workdir, checkpoint_dir)
    mounts = [str(v["mount_path"]).rstrip("/") + "/" for v in config.volumes]
    if not any((checkpoint_dir.rstrip("/") + "/").startswith(m) for m in mounts):
        logger.warning(
            "checkpoint.checkpoint_dir %r is not on a k8s.volumes mount: checkpoints die with the pods, and a "
            "restarted pod cannot resume; mount a PersistentVolumeClaim there",
            checkpoint_dir,
        )


def _print_passthrough(where: str) -> None:
    present = [name for name in PASSTHROUGH_SECRETS if os.environ.get(name)]
    if present:
        print(f"  {', '.join(present)}: passed to {where} from yours, not written to any file")
