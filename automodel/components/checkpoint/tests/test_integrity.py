"""The manifest: what makes a checkpoint complete, and how a damaged one is reported (as damaged, not as a changed
model). And LATEST may only name a checkpoint inside its own directory."""

import hashlib
import json
import logging
import shutil

import pytest
import torch

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError
from automodel.components.checkpoint._model_io import load_state
from automodel.components.checkpoint.tests.tiny import make_model, make_optim, save, train_step


def make_checkpointer(root, **kwargs) -> Checkpointer:
    kwargs.setdefault("enabled", True)
    return Checkpointer(CheckpointConfig(checkpoint_dir=str(root), **kwargs))


@pytest.fixture
def run(tmp_path):
    """Two checkpoints (steps 1 and 2) of a trained model with optimizer and scheduler."""
    model = make_model(seed=0)
    optimizer, scheduler = make_optim(model)
    checkpointer = make_checkpointer(tmp_path / "ckpt")
    for step in (1, 2):
        train_step(model, optimizer, scheduler, step)
        save(checkpointer, 0, step, model, optimizer=optimizer, lr_scheduler=scheduler)
    return tmp_path / "ckpt"


def load_everything(path):
    model = make_model(seed=1)
    optimizer, scheduler = make_optim(model)
    return make_checkpointer(path.parent).load(path, model=model, optimizer=optimizer, lr_scheduler=scheduler)


def shard(path):
    return next((path / "state").glob("shard-*.safetensors"))


def test_manifest_lists_every_file_with_size_and_sha256(run):
    path = run / "epoch_0_step_2"
    manifest = json.loads((path / "manifest.json").read_text())
    assert (manifest["format"], manifest["version"]) == ("automodel-checkpoint", 2)
    on_disk = {p.relative_to(path).as_posix(): p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert set(manifest["files"]) == set(on_disk)
    assert {"model/model.safetensors", "state/extra.json", "scheduler.json", "rng_rank0.json"} <= set(on_disk)
    for name, file in on_disk.items():
        entry = manifest["files"][name]
        assert entry == {"size": file.stat().st_size, "sha256": hashlib.sha256(file.read_bytes()).hexdigest()}


@pytest.mark.parametrize("remove", ["manifest.json", "meta.json", "state/extra.json", "shard", "scheduler.json"])
def test_a_partial_folder_is_never_complete(run, remove, caplog):
    # a copy that lost a file: resume falls back to the previous checkpoint, restore_from says what is missing
    path = run / "epoch_0_step_2"
    victim = shard(path) if remove == "shard" else path / remove
    name = victim.relative_to(path).as_posix()
    victim.unlink()
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_1"
    assert f"names '{path}', which is not a complete checkpoint ({name} is missing); resuming from" in caplog.text
    with pytest.raises(CheckpointError, match=rf"restore_from '.*epoch_0_step_2' is not a complete checkpoint: {name}"):
        make_checkpointer(run, restore_from=str(path)).find_resume_checkpoint()
    with pytest.raises(CheckpointError, match=rf"is not a complete checkpoint: {name} is missing"):
        load_everything(path)


def test_an_unreadable_or_hostile_manifest_is_not_complete(run):
    path = run / "epoch_0_step_2"
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"manifest.json is unreadable"):
        load_everything(path)
    manifest["files"]["../../etc/passwd"] = {"size": 1, "sha256": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"manifest.json lists '../../etc/passwd', which is not a path inside"):
        load_everything(path)
    assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_1"


def test_a_truncated_shard_is_reported_as_truncated(run, caplog):
    path = run / "epoch_0_step_2"
    file = shard(path)
    size = file.stat().st_size
    file.write_bytes(file.read_bytes()[: size - 100])
    message = rf"state/{file.name} is truncated \({size - 100} of {size} bytes\)"
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_1"
    assert f"state/{file.name} is truncated ({size - 100} of {size} bytes)" in caplog.text
    with pytest.raises(CheckpointError, match=message):
        make_checkpointer(run, restore_from=str(path)).find_resume_checkpoint()
    with pytest.raises(CheckpointError, match=message):
        load_everything(path)
    # without the manifest check (the state read directly), the safetensors header still tells
    model = make_model()
    with pytest.raises(CheckpointError, match=r"is damaged: " + message) as error:
        load_state(path / "state", model, make_optim(model)[0])
    assert "trainable parameters changed" not in str(error.value)


def test_a_corrupt_file_is_reported_as_corrupt(run):
    path = run / "epoch_0_step_2"
    file = shard(path)
    data = bytearray(file.read_bytes())
    data[-5] ^= 0xFF  # same size, one byte of a tensor flipped
    file.write_bytes(bytes(data))
    assert make_checkpointer(run).find_resume_checkpoint() == path  # sizes only: it looks complete
    with pytest.raises(CheckpointError, match=rf"checkpoint '.*' is damaged: state/{file.name} is corrupt \(sha256"):
        load_everything(path)
    (path / "train_state.json").write_text((path / "train_state.json").read_text().replace("2", "7"))
    with pytest.raises(CheckpointError, match=r"is damaged: .*train_state.json is corrupt \(sha256 mismatch\)"):
        make_checkpointer(run).load(path)  # read even without a model


def test_a_shard_added_after_the_save_is_refused(run):
    # the state reader takes every shard in state/, so one the manifest does not vouch for is an error
    path = run / "epoch_0_step_2"
    shutil.copy(shard(path), path / "state" / "shard-00009-model-00001-of-00001.safetensors")
    with pytest.raises(CheckpointError, match=r"state/shard-00009-model-00001-of-00001.safetensors is not listed in"):
        load_everything(path)


@pytest.mark.parametrize(
    "content",
    ["../other/epoch_0_step_9", "/tmp/epoch_0_step_9", "epoch_0_step_1/../../x", "epoch_0_step_1\n../x", "garbage", ""],
)
def test_latest_may_only_name_a_checkpoint_in_its_directory(run, content, caplog):
    (run / "LATEST").write_text(content)
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_2"
    assert "which is not a checkpoint name (epoch_<E>_step_<S>); it is ignored: resuming from the newest" in caplog.text


def test_links_out_of_the_checkpoint_dir_are_not_followed(run, tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run / "epoch_0_step_2", elsewhere / "epoch_0_step_9")
    (run / "epoch_0_step_8").symlink_to(elsewhere / "epoch_0_step_9")
    (run / "LATEST").write_text("epoch_0_step_8\n")
    with caplog.at_level(logging.WARNING):
        assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_2"
    assert "a link to" in caplog.text and "it is ignored" in caplog.text
    (run / "LATEST").unlink()
    (run / "LATEST").symlink_to(elsewhere / "LATEST-target")  # a LATEST that is itself a link: content still checked
    (elsewhere / "LATEST-target").write_text("../elsewhere/epoch_0_step_9")
    assert make_checkpointer(run).find_resume_checkpoint() == run / "epoch_0_step_2"


def test_a_checkpoint_loads_after_a_copy(run, tmp_path):
    # the manifest holds relative paths only: a copied run dir loads
    shutil.copytree(run, tmp_path / "copy")
    loaded = load_everything(tmp_path / "copy" / "epoch_0_step_2")
    assert loaded["train_state"]["step_scheduler"]["step"] == 2
    assert torch.is_tensor(loaded["rng_state"]["torch"])
