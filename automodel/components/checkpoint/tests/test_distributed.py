"""Two gloo ranks on CPU: a collective save writes one state shard and one RNG file per rank, the manifest lists what
every rank wrote, a failure on one rank fails both, and FSDP2 / DDP checkpoints load on one process (resharded) and
continue exactly on two."""

import json
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError, frozen_fingerprint
from automodel.components.checkpoint.tests.tiny import VOCAB, make_model, make_optim, save

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def _step(model, optimizer, scheduler, seed: int) -> None:
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed))
    model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def _full_params(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in get_model_state_dict(model, options=FULL).items()}


def _sharded(mesh):
    from torch.distributed.fsdp import fully_shard

    model = make_model(seed=0)
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, *make_optim(model)


def _worker(rank: int, tmp: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    try:
        # --- a replicated model: RNG files per rank, failures and conflicts on one rank ---------------------------
        config = CheckpointConfig(enabled=True, checkpoint_dir=f"{tmp}/ckpt")
        checkpointer = Checkpointer(config, rank=rank, world_size=2)
        torch.manual_seed(100 + rank)  # each rank has its own random stream
        rng_state = {"torch": torch.get_rng_state(), "rank": rank}
        model = make_model(seed=0)  # identical on both ranks, as under DDP
        path = save(checkpointer, 0, 1, model, rng_state=rng_state)
        results["path"] = str(path)

        restored = make_model(seed=1)
        loaded = Checkpointer(config, rank=rank, world_size=2).load(path, model=restored)
        results["weights_equal"] = all(
            torch.equal(a, b) for a, b in zip(model.state_dict().values(), restored.state_dict().values())
        )
        results["rng_rank"] = loaded["rng_state"]["rank"]
        results["rng_equal"] = torch.equal(loaded["rng_state"]["torch"], rng_state["torch"])

        # rank 1 has a value a checkpoint cannot hold: both ranks raise (no rank hangs) and nothing is written
        try:
            save(checkpointer, 0, 2, model, rng_state={"bad": object()} if rank == 1 else rng_state)
            results["failure"] = "none"
        except CheckpointError as error:
            results["failure"] = str(error)

        # rank 0 finds a conflict: every rank gets the error
        try:
            save(Checkpointer(config, rank=rank, world_size=2), 0, 1, model, rng_state=rng_state)
            results["conflict"] = "none"
        except CheckpointError as error:
            results["conflict"] = str(error)

        # --- FSDP2: sharded save; a 2-rank resume continues exactly ------------------------------------------------
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (2,))
        fsdp_config = CheckpointConfig(enabled=True, checkpoint_dir=f"{tmp}/fsdp")
        model, optimizer, scheduler = _sharded(mesh)
        for seed in range(2):
            _step(model, optimizer, scheduler, 10 * seed + rank)
        fsdp_checkpointer = Checkpointer(fsdp_config, rank=rank, world_size=2)
        path = save(fsdp_checkpointer, 0, 2, model, optimizer=optimizer, lr_scheduler=scheduler)
        full_optim = get_optimizer_state_dict(model, optimizer, options=FULL)
        if rank == 0:  # what a 1-process load must reproduce (our own test file: torch.save is fine here)
            torch.save({"params": _full_params(model), "optim": full_optim["state"]}, f"{tmp}/fsdp_expected.pt")
        else:
            _full_params(model)  # collective
        _step(model, optimizer, scheduler, 99 + rank)
        uninterrupted = _full_params(model)

        model, optimizer, scheduler = _sharded(mesh)
        Checkpointer(fsdp_config, rank=rank, world_size=2).load(
            path, model=model, optimizer=optimizer, lr_scheduler=scheduler
        )
        _step(model, optimizer, scheduler, 99 + rank)
        resumed = _full_params(model)
        results["fsdp_resume_exact"] = all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)

        model, _, _ = _sharded(mesh)  # the fingerprint of DTensor parameters gathers them
        for name, param in model.named_parameters():
            param.requires_grad_("embed" in name)
        results["fsdp_fingerprint"] = frozen_fingerprint(model)

        # --- DDP ----------------------------------------------------------------------------------------------------
        torch.manual_seed(0)
        ddp = torch.nn.parallel.DistributedDataParallel(make_model(seed=0))
        ddp_optimizer, ddp_scheduler = make_optim(ddp)
        for seed in range(2):
            ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(seed + 10 * rank))
            ddp(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            ddp_optimizer.step()
            ddp_scheduler.step()
            ddp_optimizer.zero_grad()
        ddp_config = CheckpointConfig(enabled=True, checkpoint_dir=f"{tmp}/ddp")
        ddp_checkpointer = Checkpointer(ddp_config, rank=rank, world_size=2)
        identity = {"architecture": "LlamaForCausalLM"}
        save(ddp_checkpointer, 0, 2, ddp, optimizer=ddp_optimizer, lr_scheduler=ddp_scheduler, model_identity=identity)
        if rank == 0:
            torch.save({k: v.clone() for k, v in ddp.module.state_dict().items()}, f"{tmp}/ddp_expected.pt")
    finally:
        dist.destroy_process_group()
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(results))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_rank_save_and_load(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path), _free_port()), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    root = tmp_path / "ckpt"
    path = root / "epoch_0_step_1"
    assert results[0]["path"] == results[1]["path"] == str(path)
    names = {p.name for p in path.iterdir()}
    assert {"rng_rank0.json", "rng_rank0.safetensors", "rng_rank1.json", "rng_rank1.safetensors"} <= names
    assert {"model", "meta.json", "manifest.json"} <= names and not any(name.endswith(".pt") for name in names)
    # the manifest lists every file, rank 1's included
    listed = set(json.loads((path / "manifest.json").read_text())["files"])
    on_disk = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - {"manifest.json"}
    assert listed == on_disk and "rng_rank1.safetensors" in listed
    assert json.loads((path / "meta.json").read_text())["world_size"] == 2
    for rank, result in enumerate(results):
        assert result["weights_equal"] and result["rng_equal"] and result["rng_rank"] == rank

    assert results[1]["failure"].startswith("cannot save rng_state: bad is a builtins.object")
    assert results[0]["failure"].startswith("another rank failed while preparing checkpoint")
    assert (root / "LATEST").read_text().strip() == "epoch_0_step_1"
    assert not (root / "epoch_0_step_2").exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # it failed before writing anything

    for result in results:
        assert "epoch_0_step_1' already exists and was not written by this run" in result["conflict"]

    # FSDP2: both ranks wrote a shard, and one process loads them (resharded) to the exact full state
    assert results[0]["fsdp_resume_exact"] and results[1]["fsdp_resume_exact"]
    fsdp_path = tmp_path / "fsdp" / "epoch_0_step_2"
    assert sorted(p.name for p in (fsdp_path / "state").glob("*.safetensors")) == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    expected = torch.load(tmp_path / "fsdp_expected.pt", weights_only=True)
    model = make_model(seed=3)
    optimizer, scheduler = make_optim(model)
    loaded = Checkpointer(CheckpointConfig(checkpoint_dir=str(tmp_path / "fsdp"))).load(
        fsdp_path, model=model, optimizer=optimizer, lr_scheduler=scheduler
    )
    assert loaded["rng_state"] is not None  # rank 0's
    state = model.state_dict()
    for key, value in expected["params"].items():
        assert torch.equal(state[key], value), key
    optim_state = get_optimizer_state_dict(model, optimizer)["state"]
    assert optim_state.keys() == expected["optim"].keys()
    for key, entry in expected["optim"].items():
        for field, value in entry.items():
            assert torch.equal(optim_state[key][field], value), (key, field)
    assert scheduler.last_epoch == 2

    # the fingerprint of the sharded model (gathered per parameter) is that of the same weights unsharded
    assert results[0]["fsdp_fingerprint"] == results[1]["fsdp_fingerprint"]
    model = make_model(seed=0)
    for name, param in model.named_parameters():
        param.requires_grad_("embed" in name)
    assert results[0]["fsdp_fingerprint"] == frozen_fingerprint(model)

    # DDP: replicated tensors are written once; one process loads them
    ddp_path = tmp_path / "ddp" / "epoch_0_step_2"
    model = make_model(seed=3)
    optimizer, scheduler = make_optim(model)
    Checkpointer(CheckpointConfig(checkpoint_dir=str(tmp_path / "ddp"))).load(
        ddp_path, model=model, optimizer=optimizer, lr_scheduler=scheduler
    )
    for key, value in torch.load(tmp_path / "ddp_expected.pt", weights_only=True).items():
        assert torch.equal(model.state_dict()[key], value), key
