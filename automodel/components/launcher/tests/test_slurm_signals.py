"""Pre-emption relies on torchrun passing SIGUSR1 on to the ranks instead of dying on it (torchrun's default, which
orphans the ranks). This checks the whole chain the launchers use: launcher process -> torchrun -> every rank."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

RANK_SCRIPT = """
import os, signal, sys, time
got = []
signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
out = sys.argv[1]
open(f"{out}/ready{os.environ['RANK']}", "w").write(str(os.getpid()))
deadline = time.monotonic() + 60
while not got and time.monotonic() < deadline:
    time.sleep(0.05)
open(f"{out}/{'saved' if got else 'timeout'}{os.environ['RANK']}", "w").close()  # the "checkpoint"
sys.exit(0 if got else 3)
"""

LAUNCHER = """
import sys
from automodel.components.launcher import build_torchrun_command, run_torchrun
sys.exit(run_torchrun(build_torchrun_command(sys.argv[1], [sys.argv[2]], nproc_per_node=2)))
"""


def test_usr1_reaches_every_rank_through_run_torchrun(tmp_path):
    script = tmp_path / "rank.py"
    script.write_text(RANK_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PET_SIGNALS_TO_HANDLE"}
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(script), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{rank}").exists() for rank in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for ready in tmp_path.glob("ready*"):  # ranks orphaned by a torchrun that died on the signal
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(ready.read_text()), signal.SIGKILL)
    assert (tmp_path / "saved0").exists() and (tmp_path / "saved1").exists(), sorted(os.listdir(tmp_path))
    # torchrun re-raises the signal after its ranks exited, so the launch reports a non-zero status.
    assert proc.returncode != 0
