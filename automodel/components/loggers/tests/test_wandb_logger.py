import builtins
import sys
import time

import pytest
import torch

from automodel.components.loggers import LoggerError, WandbLogger


@pytest.fixture
def offline_env(tmp_path, monkeypatch):
    # Keep wandb's config/cache out of $HOME and away from the network.
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_offline_run_writes_its_files(offline_env):
    save_dir = offline_env / "wandb_runs"
    logger = WandbLogger(
        project="automodel-test", name="tiny", save_dir=save_dir, mode="offline", tags=["t"], config={"lr": 1e-5}
    )
    run_dir = logger.run.dir
    logger.log({"loss": torch.tensor(1.5), "lr": 1e-5}, step=1)
    logger.log({"loss": 1.2}, step=1, prefix="val")
    logger.log_config({"seed": 3})
    assert logger.run.config["lr"] == 1e-5 and logger.run.config["seed"] == 3
    logger.close()
    assert logger.run is None
    runs = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and str(runs[0]) in run_dir
    (record_log,) = runs[0].glob("run-*.wandb")  # the offline log that `wandb sync` uploads
    # wandb-core (a separate process) writes this log; once in a fresh-clone run, finish() returned before the
    # history records had reached the file, so wait for them (a missing record still fails after 30 s).
    wanted = (b"train/loss", b"val/loss", b"automodel-test")
    deadline = time.monotonic() + 30
    while not all(key in record_log.read_bytes() for key in wanted) and time.monotonic() < deadline:
        time.sleep(0.2)
    data = record_log.read_bytes()
    assert all(key in data for key in wanted), [key for key in wanted if key not in data]


def test_other_ranks_do_not_start_a_run(offline_env):
    logger = WandbLogger(project="p", save_dir=offline_env / "w", mode="offline", rank=1)
    logger.log({"loss": 1.0}, 1)
    logger.close()
    assert logger.run is None and not (offline_env / "w").exists()


def test_errors(offline_env, monkeypatch):
    with pytest.raises(LoggerError, match=r"unknown wandb option\(s\) \['enable'\].*'group'"):
        WandbLogger(project="p", mode="offline", enable=True)
    with pytest.raises(LoggerError, match="save_dir and wandb.dir are the same setting"):
        WandbLogger(project="p", mode="offline", save_dir="a", dir="b")

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(LoggerError, match=r"wandb is not installed: pip install 'automodel\[wandb\]'"):
        WandbLogger(project="p", mode="offline")
