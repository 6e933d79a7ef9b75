"""Job launchers: local processes through torchrun (SLURM and Kubernetes come in their own modules)."""

from automodel.components.launcher.interactive import LaunchError, build_torchrun_command, run_torchrun

__all__ = ["LaunchError", "build_torchrun_command", "run_torchrun"]
