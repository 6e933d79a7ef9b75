"""Job launchers: local processes through torchrun, SLURM batch jobs and Kubernetes Indexed Jobs."""

from automodel.components.launcher._settings import find_checkout
from automodel.components.launcher.interactive import LaunchError, build_torchrun_command, run_torchrun
from automodel.components.launcher.k8s import (
    K8sConfig,
    apply_k8s_manifests,
    default_k8s_job_name,
    k8s_follow_commands,
    k8s_job_dir,
    manifests_to_yaml,
    render_k8s_manifests,
)
from automodel.components.launcher.slurm import (
    SlurmConfig,
    SlurmJob,
    build_slurm_job,
    parse_slurm_time,
    submit_slurm_job,
)

__all__ = [
    "K8sConfig",
    "LaunchError",
    "SlurmConfig",
    "SlurmJob",
    "apply_k8s_manifests",
    "build_slurm_job",
    "build_torchrun_command",
    "default_k8s_job_name",
    "find_checkout",
    "k8s_follow_commands",
    "k8s_job_dir",
    "manifests_to_yaml",
    "parse_slurm_time",
    "render_k8s_manifests",
    "run_torchrun",
    "submit_slurm_job",
]
