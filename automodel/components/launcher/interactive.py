"""Run a recipe on this machine with N processes through torchrun (`python -m torch.distributed.run`)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from automodel.components.launcher._settings import TORCHRUN_SIGNALS, LaunchError

logger = logging.getLogger(__name__)


def build_torchrun_command(
    script: str,
    script_args: Sequence[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    python: str | None = None,
) -> list[str]:
    """The torchrun command line for a single-node (standalone rendezvous) run of `script`."""
    if nproc_per_node < 1:
        raise LaunchError(f"--nproc-per-node must be >= 1, got {nproc_per_node}")
    if nnodes != 1:
        raise LaunchError("interactive launches run on one node; use a slurm: or k8s: section for several nodes")
    return [
        python or sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc_per_node}",
        script,
        *script_args,
    ]


def run_torchrun(command: Sequence[str], env: dict[str, str] | None = None) -> int:
    """Run torchrun in the foreground and return its exit status.

    SIGTERM / SIGUSR1 sent to this process are forwarded to torchrun, which forwards them to every rank, so
    pre-emption reaches the training loop (which checkpoints and exits cleanly). torchrun handles only SIGTERM,
    SIGINT, SIGHUP and SIGQUIT by default and dies on SIGUSR1, orphaning the ranks: PET_SIGNALS_TO_HANDLE (read
    by torch >= 2.9) adds SIGUSR1 unless the caller set it.
    """
    logger.info("Launching: %s", " ".join(command))
    proc = subprocess.Popen(list(command), env={"PET_SIGNALS_TO_HANDLE": TORCHRUN_SIGNALS, **os.environ, **(env or {})})

    def forward(signum: int, _frame: object) -> None:
        proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        return proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
