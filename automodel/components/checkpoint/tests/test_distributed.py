"""Two gloo ranks on CPU: a collective save writes one RNG file per rank, and a failure on one rank fails both."""

import json
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from automodel.components.checkpoint import CheckpointConfig, Checkpointer, CheckpointError
from automodel.components.checkpoint.tests.tiny import make_model, save


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this RNG state")


def _worker(rank: int, tmp: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=2)
    results = {}
    try:
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

        # rank 1 fails while writing: both ranks raise (no rank hangs) and nothing is published
        try:
            save(checkpointer, 0, 2, model, rng_state=Unpicklable() if rank == 1 else rng_state)
            results["failure"] = "none"
        except CheckpointError as error:
            results["failure"] = f"other: {error}"
        except RuntimeError as error:
            results["failure"] = f"own: {error}"

        # rank 0 finds a conflict: every rank gets the error
        try:
            save(Checkpointer(config, rank=rank, world_size=2), 0, 1, model, rng_state=rng_state)
            results["conflict"] = "none"
        except CheckpointError as error:
            results["conflict"] = str(error)
    finally:
        dist.destroy_process_group()
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(results))


def test_two_rank_save_and_load(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path),), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    root = tmp_path / "ckpt"
    path = root / "epoch_0_step_1"
    assert results[0]["path"] == results[1]["path"] == str(path)
    assert {"rng_rank0.pt", "rng_rank1.pt", "model", "meta.json"} <= {p.name for p in path.iterdir()}
    assert json.loads((path / "meta.json").read_text())["world_size"] == 2
    for rank, result in enumerate(results):
        assert result["weights_equal"] and result["rng_equal"] and result["rng_rank"] == rank

    assert results[1]["failure"] == "own: cannot pickle this RNG state"
    assert results[0]["failure"].startswith("other: another rank failed while writing checkpoint")
    assert (root / "LATEST").read_text().strip() == "epoch_0_step_1"
    assert not (root / "epoch_0_step_2").exists()
    assert len([p for p in root.iterdir() if p.name.startswith(".tmp-epoch_0_step_2-")]) == 1

    for result in results:
        assert "epoch_0_step_1' already exists and was not written by this run" in result["conflict"]
