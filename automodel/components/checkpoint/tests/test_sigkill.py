"""A save killed with SIGKILL half-way must never be taken for a checkpoint, and must not block later saves."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from automodel.components.checkpoint import CheckpointConfig, Checkpointer
from automodel.components.checkpoint.tests.tiny import make_model, make_optim, save

REPO_ROOT = Path(__file__).resolve().parents[4]

TRAINER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from automodel.components.checkpoint import CheckpointConfig, Checkpointer
    from automodel.components.checkpoint.tests.tiny import make_model, make_optim, save, train_step

    root, marker, expected = sys.argv[1:4]
    model = make_model(seed=0)
    optimizer, scheduler = make_optim(model)
    checkpointer = Checkpointer(CheckpointConfig(enabled=True, checkpoint_dir=root))
    train_step(model, optimizer, scheduler, 0)
    save(checkpointer, 0, 1, model, optimizer=optimizer, lr_scheduler=scheduler)
    torch.save(model.state_dict(), expected)

    train_step(model, optimizer, scheduler, 1)
    write_model = model.save_pretrained

    def slow_writer(directory, **kwargs):  # the model is written, the rest of the checkpoint is not
        write_model(directory, **kwargs)
        Path(marker).write_text(str(directory))
        time.sleep(300)

    model.save_pretrained = slow_writer
    save(checkpointer, 0, 2, model, optimizer=optimizer, lr_scheduler=scheduler)
    """
)


def test_sigkill_during_save_keeps_the_previous_checkpoint(tmp_path):
    root, marker, expected = tmp_path / "ckpt", tmp_path / "writing", tmp_path / "expected.pt"
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    with open(tmp_path / "trainer.log", "wb") as log:
        trainer = subprocess.Popen(
            [sys.executable, "-c", TRAINER, str(root), str(marker), str(expected)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while not marker.exists() and trainer.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), (tmp_path / "trainer.log").read_text()
            temp_dirs = [p for p in root.iterdir() if p.name.startswith(".tmp-epoch_0_step_2-")]
            assert len(temp_dirs) == 1 and (temp_dirs[0] / "model" / "model.safetensors").is_file()
        finally:
            trainer.kill()  # SIGKILL: no handler, no cleanup
            trainer.wait()
    assert trainer.returncode == -9

    # the half-written step 2 is ignored; step 1 is found and loads
    assert (root / "LATEST").read_text().strip() == "epoch_0_step_1"
    checkpointer = Checkpointer(CheckpointConfig(enabled=True, checkpoint_dir=str(root)))
    path = checkpointer.find_resume_checkpoint()
    assert path == root / "epoch_0_step_1"
    model = make_model(seed=5)
    optimizer, scheduler = make_optim(model)
    loaded = checkpointer.load(path, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    assert loaded["train_state"]["step_scheduler"]["step"] == 1
    for key, value in torch.load(expected, weights_only=True).items():
        assert torch.equal(model.state_dict()[key], value), key

    # the resumed run saves step 2 for real, and the leftover is gone
    save(checkpointer, 0, 2, model, optimizer=optimizer, lr_scheduler=scheduler)
    assert sorted(p.name for p in root.iterdir()) == ["LATEST", "epoch_0_step_1", "epoch_0_step_2"]
    assert Checkpointer(CheckpointConfig(enabled=True, checkpoint_dir=str(root))).find_resume_checkpoint() == (
        root / "epoch_0_step_2"
    )
