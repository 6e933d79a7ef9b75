"""A checkpoint from someone else must never run code: loads read JSON and safetensors only, never a pickle."""

import json
import pathlib
import pickle
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError, _integrity
from automodel.components.checkpoint.tests.tiny import make_model, make_optim, save, train_step

TRUST = "AUTOMODEL_TRUST_PICKLED_CHECKPOINTS"
_recording: list[list[str]] = []  # the audit hook cannot be removed: it records only while a test holds a list


def _hook(event: str, args: tuple) -> None:
    if event == "pickle.find_class" and _recording:
        _recording[-1].append(f"{args[0]}.{args[1]}")


sys.addaudithook(_hook)


class _Unpickles:
    """Records every class an unpickler looks up (the audit event every pickle load of an object raises)."""

    def __enter__(self) -> list[str]:
        self.events: list[str] = []
        _recording.append(self.events)
        return self.events

    def __exit__(self, *exc_info: object) -> None:
        _recording.remove(self.events)


class Plant:
    """A pickle that, when loaded, writes a marker file: what a hostile checkpoint would do (or worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.write_text, (pathlib.Path(self.marker), "code ran"))


def make_checkpointer(root: Path, **kwargs) -> Checkpointer:
    kwargs.setdefault("enabled", True)
    return Checkpointer(CheckpointConfig(checkpoint_dir=str(root), **kwargs))


def rng_like_stateful_rng() -> dict:
    # what training.StatefulRNG.state_dict() returns (python tuple state, numpy keys as a tensor, torch bytes)
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "random": random.getstate(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [torch.get_rng_state(), torch.get_rng_state()],  # a list of byte tensors, as on 2 GPUs
    }


def trained(seed: int = 0):
    model = make_model(seed=seed)
    optimizer, scheduler = make_optim(model)
    for step in range(2):
        train_step(model, optimizer, scheduler, step)
    return model, optimizer, scheduler


def test_loading_a_checkpoint_never_unpickles(tmp_path, monkeypatch):
    model, optimizer, scheduler = trained()
    rng_state = rng_like_stateful_rng()
    path = save(
        make_checkpointer(tmp_path), 0, 2, model, optimizer=optimizer, lr_scheduler=scheduler, rng_state=rng_state
    )

    # the detector works: a legacy checkpoint's pickled metadata raises the events
    legacy = write_legacy_checkpoint(tmp_path / "old" / "epoch_0_step_2", model, optimizer, scheduler)
    monkeypatch.setenv(TRUST, "1")
    restored = make_model(seed=1)
    with _Unpickles() as events:
        make_checkpointer(tmp_path / "old").load(legacy, model=restored)
    assert events, "the audit hook saw no unpickling in a pickle load: the test below would prove nothing"
    monkeypatch.delenv(TRUST)

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load called while loading a checkpoint")

    monkeypatch.setattr(torch, "load", no_torch_load)
    restored = make_model(seed=1)
    restored_optimizer, restored_scheduler = make_optim(restored)
    with _Unpickles() as events:
        loaded = make_checkpointer(tmp_path).load(
            path, model=restored, optimizer=restored_optimizer, lr_scheduler=restored_scheduler
        )
    assert events == []
    # ... and it is all there, types included (tuples stay tuples: random.setstate needs them)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert restored_optimizer.param_groups[0]["betas"] == (0.9, 0.999)
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    got = loaded["rng_state"]
    assert got["random"] == rng_state["random"] and isinstance(got["random"][1], tuple)
    assert torch.equal(got["numpy"]["keys"], rng_state["numpy"]["keys"])
    assert {k: v for k, v in got["numpy"].items() if k != "keys"} == {
        k: v for k, v in rng_state["numpy"].items() if k != "keys"
    }
    assert torch.equal(got["torch"], rng_state["torch"]) and len(got["cuda"]) == 2
    random.setstate(got["random"])  # accepted as it is


def write_legacy_checkpoint(path: Path, model, optimizer, scheduler) -> Path:
    """A checkpoint as the pickle-based format wrote it (DCP default files, scheduler.pt, rng_rank0.pt)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        dcp.save(state, checkpoint_id=str(path / "state"), no_dist=True)
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, path / "rng_rank0.pt")
    (path / "train_state.json").write_text(json.dumps({"step_scheduler": {"step": 2, "epoch": 0}}))
    (path / "meta.json").write_text(json.dumps({"model_identity": {}, "world_size": 1}))
    return path


def plant(path: Path, marker: Path) -> None:
    payload = pickle.dumps(Plant(marker))
    (path / "state").mkdir(parents=True, exist_ok=True)
    for name in ("state/.metadata", "scheduler.pt", "rng_rank0.pt"):
        (path / name).write_bytes(payload)


def test_the_planted_pickle_is_live(tmp_path):
    # the payload the tests below plant does run when unpickled: they test something
    pickle.loads(pickle.dumps(Plant(tmp_path / "marker")))
    assert (tmp_path / "marker").read_text() == "code ran"


def test_an_old_format_checkpoint_with_a_planted_pickle_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "run" / "epoch_0_step_5"
    plant(path, marker)
    (path / "train_state.json").write_text(json.dumps({"step_scheduler": {"step": 5}}))
    (path / "meta.json").write_text(json.dumps({"model_identity": {}, "world_size": 1}))
    (tmp_path / "run" / "LATEST").write_text("epoch_0_step_5\n")
    refused = r"old pickle-based format .*Only if you wrote this checkpoint yourself, set " + TRUST + "=1"

    with pytest.raises(CheckpointError, match=refused):  # restore_from a path
        make_checkpointer(tmp_path / "mine", restore_from=str(path)).find_resume_checkpoint()
    with pytest.raises(CheckpointError, match=refused):  # restore_from the run dir
        make_checkpointer(tmp_path / "mine", restore_from=str(tmp_path / "run")).find_resume_checkpoint()
    with pytest.raises(CheckpointError, match=refused):  # resuming in that dir
        make_checkpointer(tmp_path / "run").find_resume_checkpoint()
    model = make_model()
    optimizer, scheduler = make_optim(model)
    with pytest.raises(CheckpointError, match=refused):  # loading it directly
        make_checkpointer(tmp_path / "run").load(path, model=model, optimizer=optimizer, lr_scheduler=scheduler)
    assert not marker.exists()


def test_a_new_format_checkpoint_never_reads_planted_pickles(tmp_path, monkeypatch):
    # An attacker adds pickles under the old names and lists them in a valid manifest: the loader never opens them,
    # even with the opt-in set (that is only for checkpoints without a manifest).
    marker = tmp_path / "marker"
    model, optimizer, scheduler = trained()
    path = save(make_checkpointer(tmp_path / "run"), 0, 2, model, optimizer=optimizer, lr_scheduler=scheduler)
    plant(path, marker)
    files = _integrity.hash_files(path, [p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"])
    (path / "manifest.json").write_text(_integrity.manifest_text(files))
    monkeypatch.setenv(TRUST, "1")
    checkpointer = make_checkpointer(tmp_path / "mine", restore_from=str(tmp_path / "run"))
    assert checkpointer.find_resume_checkpoint() == path
    restored = make_model(seed=1)
    restored_optimizer, restored_scheduler = make_optim(restored)
    checkpointer.load(path, model=restored, optimizer=restored_optimizer, lr_scheduler=restored_scheduler)
    assert not marker.exists()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))


def test_old_format_loads_with_the_opt_in(tmp_path, monkeypatch, caplog):
    model, optimizer, scheduler = trained()
    path = write_legacy_checkpoint(tmp_path / "run" / "epoch_0_step_2", model, optimizer, scheduler)
    (tmp_path / "run" / "LATEST").write_text("epoch_0_step_2\n")
    monkeypatch.setenv(TRUST, "1")
    checkpointer = make_checkpointer(tmp_path / "run")
    assert checkpointer.find_resume_checkpoint() == path
    restored = make_model(seed=1)
    restored_optimizer, restored_scheduler = make_optim(restored)
    loaded = checkpointer.load(path, model=restored, optimizer=restored_optimizer, lr_scheduler=restored_scheduler)
    assert loaded["train_state"]["step_scheduler"]["step"] == 2 and loaded["rng_state"] is not None
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values()))
    assert restored_scheduler.state_dict() == scheduler.state_dict()
    assert f"loading the pickle-based checkpoint '{path}' because {TRUST}=1" in caplog.text
    # the next save is in the safe format, and a resume then prefers it
    new = save(checkpointer, 0, 3, restored, optimizer=restored_optimizer, lr_scheduler=restored_scheduler)
    monkeypatch.delenv(TRUST)
    assert (new / "manifest.json").is_file() and make_checkpointer(tmp_path / "run").find_resume_checkpoint() == new


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("optimizer", r"cannot save the model/optimizer state: optim.param_groups\[0\].schedule is a builtins.object"),
        ("scheduler", r"cannot save the LR scheduler state: hook is a builtins.function"),
        ("rng", r"cannot save rng_state: numpy is a numpy.ndarray"),
        ("rng_key", r"cannot save rng_state: the top level has a key \(1, 2\) of type tuple"),
    ],
)
def test_unsupported_values_fail_before_any_file_is_written(tmp_path, where, message):
    model = make_model()
    optimizer, scheduler = make_optim(model)
    rng_state = {"torch": torch.get_rng_state()}
    if where == "optimizer":
        optimizer.param_groups[0]["schedule"] = object()
    elif where == "scheduler":
        scheduler.hook = lambda step: step  # StepLR.state_dict() returns its __dict__
    elif where == "rng":
        rng_state["numpy"] = np.zeros(3)
    else:
        rng_state[(1, 2)] = 0
    with pytest.raises(CheckpointError, match=message):
        save(
            make_checkpointer(tmp_path / "ckpt"),
            0,
            1,
            model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            rng_state=rng_state,
        )
    assert not (tmp_path / "ckpt").exists()
